"""The broker's request context around every handler: request ID and client address, the
brute-force guard, CORS preflights, the one place errors become JSON, the answer headers,
metrics and the access log.

It wraps each route's handler (:func:`answered`, in :mod:`broker.routes`) rather than
being an aiohttp middleware: with any middleware, aiohttp adds a layer of its own to every
request (a coroutine that sets and resets ``match_info.current_app``) and looks the chain
up in a cache; a plain wrapper costs neither. What no route matches reaches
:func:`unrouted`, the last route, so aiohttp's 404 and 405 pass here too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import DynamicResource
from multidict import istr

from broker.cube.callback import CALLBACK_SECRET_HEADER
from broker.errors import (
    AuthFailure,
    BrokerError,
    ClientClosedRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimitCause,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
    ValidationFailed,
)
from broker.errors import BadRequest as BadRequestError
from broker.http.context import X_REQUEST_ID, RequestContext
from broker.http.cors import finish_answer, is_preflight
from broker.http.listeners import serves
from broker.http.requests import admin_credential, client_ip, proxy_credential
from broker.state import (
    CONTEXT,
    GUARD,
    KEY_VERIFIER,
    LISTENERS,
    METRICS,
    REQUEST_IDS,
    SETTINGS,
    TOKEN_VERIFIER,
)
from broker.support.logs import redact
from broker.support.metrics import STANDARD_METHODS
from broker.support.tracing import trace_id

access_log = logging.getLogger("broker.access")
error_log = logging.getLogger("broker.errors")

TRACEPARENT = istr("traceparent")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: aiohttp's own refusals (it raises no 401: credentials are the broker's business).
_HTTP_ERRORS: dict[int, type[BrokerError]] = {
    400: BadRequestError,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def route_template(request: web.Request, listener: str) -> str:
    """The matched route's template (``/admin/api-keys/{id}``), never the raw path;
    ``unmatched`` for unknown paths and for ``listener``'s not serving the route."""
    resource = request.match_info.route.resource  # the context runs in matched routes only
    if not serves(listener, request.path) or resource is None or resource.name == UNROUTED:
        return "unmatched"
    return resource.canonical


#: The name of the last route, which matches every path nothing else does.
UNROUTED = "unrouted"


class _EveryPath(DynamicResource):
    """A resource that matches every path: any character (``.`` would skip a decoded line
    break) and targets that are no path at all (``OPTIONS *``)."""

    def __init__(self) -> None:
        super().__init__("/{unrouted}", name=UNROUTED)

    def _match(self, path: str) -> dict[str, str]:
        return {"unrouted": path}


def add_unrouted(router: web.UrlDispatcher) -> None:
    """Add, last, the route of every request no other route matches (:func:`unrouted`)."""
    resource = _EveryPath()
    router.register_resource(resource)
    resource.add_route("*", answered(unrouted))


async def unrouted(request: web.Request) -> web.StreamResponse:
    """What no route matched: 405 naming the methods the path takes, else 404 (mapped to
    SPEC §3 by :func:`map_error`, like any ``HTTPException``)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name != UNROUTED:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def answered(handler: Handler) -> Handler:
    """``handler`` run in the broker's request context (:func:`_answer`)."""
    return functools.partial(_answer, handler=handler)


async def every_route_answered(app: web.Application) -> None:
    """At start-up: refuse to serve a route added without :func:`answered` (it would
    answer outside the request context: no JSON errors, no guard, no access log)."""
    bare = [
        route.resource.canonical if route.resource is not None else "?"
        for route in app.router.routes()
        if not (isinstance(route.handler, functools.partial) and route.handler.func is _answer)
    ]
    if bare:
        raise RuntimeError(f"routes outside the request context: {', '.join(bare)}")


def error_body(exc: BrokerError) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "error", "message": exc.message, "error": exc.code}
    if isinstance(exc, ValidationFailed):
        body["details"] = [{"field": d.field, "message": d.message} for d in exc.details]
    return body


def error_response(exc: BrokerError) -> web.Response:
    response = web.json_response(error_body(exc), status=exc.status, headers=exc.headers)
    if exc.closes_connection:
        response.force_close()
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request context, in this order: request ID and client address, CORS preflight,
    the brute-force guard, the handler; every error becomes SPEC §3's JSON
    (:func:`map_error`); the answer gets the broker's headers
    (:func:`~broker.http.cors.finish_answer`); then metrics and one access-log line.

    One layer rather than four: each layer costs a call chain on every request, and this
    is the proxy's hot path.
    """
    started = time.perf_counter()
    app = request.app  # a property lookup through the match info: read once
    incoming = request.headers.get(X_REQUEST_ID)
    if incoming and _REQUEST_ID_RE.fullmatch(incoming):
        context = RequestContext(incoming)
    else:
        context = RequestContext(app[REQUEST_IDS].new())
    request[CONTEXT] = context
    status = 500
    try:
        try:
            context.client_ip = client_ip(request, app[SETTINGS].trusted_proxies)
            if not request.raw_path.startswith("/"):
                # An absolute-form target (``GET http://host/…``) is for a forward proxy,
                # the asterisk form (``OPTIONS *``) asks about the server: the broker
                # builds nothing from either.
                raise BadRequestError("The request target must be a path.")
            listener = context.listener = app[LISTENERS].of(request)
            if is_preflight(request):
                response: web.StreamResponse = web.Response(status=204)
            elif not serves(listener, request.path):
                raise NotFound()  # another listener's route: exactly an unknown path
            else:
                response = await _guarded(request, context, handler)
        except Exception as exc:
            response = map_error(request, context, exc)
        except asyncio.CancelledError:
            status = ClientClosedRequest.status  # the caller went away (handler cancellation)
            raise
        if not response.prepared:
            finish_answer(request, response)
        status = response.status
        return response
    finally:
        _account(request, context, status, time.perf_counter() - started)


#: Operating endpoints stay reachable from an address the guard refuses.
_UNGUARDED = frozenset({"/healthz", "/readyz", "/metrics"})


async def _guarded(
    request: web.Request, context: RequestContext, handler: Handler
) -> web.StreamResponse:
    """Refuse addresses the brute-force guard blocked, unless the credential presented is
    one the broker already knows to be good (:func:`_vouched`, from memory), and report
    failed authentications to it (a missing credential is not an attempt).

    Cube's callback (``/internal/``) is guarded apart from the public routes: in a sidecar
    pod Cube and proxied dashboards may share an address, and bad tokens from one must not
    cut the other off.
    """
    if request.path in _UNGUARDED:
        return await handler(request)
    ip = context.client_ip
    subject = f"internal:{ip}" if request.path.startswith("/internal/") else ip
    guard = request.app[GUARD]
    left = guard.blocked(subject)
    if left is not None and not _vouched(request):
        message = "Too many failed authentications from this address."
        raise RateLimited(left, RateLimitCause.BRUTE_FORCE, message)
    try:
        return await handler(request)
    except Unauthorized as exc:
        if exc.reason is not AuthFailure.MISSING:
            await guard.failed(subject)
        raise


def _vouched(request: web.Request) -> bool:
    """Whether the request carries a credential known to be good without asking the store:
    the admin key or the callback secret, or an Athena key or token that authenticated on
    this replica before and whose key the live cache says is still usable."""
    app, headers = request.app, request.headers
    settings = app[SETTINGS]
    admin = admin_credential(request)
    if admin and settings.admin_key is not None and settings.admin_key.matches(admin):
        return True
    callback = headers.get(CALLBACK_SECRET_HEADER)
    if callback and settings.callback_secret.matches(callback):
        return True
    credential = proxy_credential(headers)
    if credential.key:
        return app[KEY_VERIFIER].vouches(credential.key)
    return bool(credential.token) and app[TOKEN_VERIFIER].vouches(credential.token)


def map_error(request: web.Request, context: RequestContext, exc: Exception) -> web.Response:
    """SPEC §3's JSON answer for any error, aiohttp's own 404/405/413 included.

    Unknown exceptions are logged once with their traceback and answered with a generic
    500 that reveals nothing. A non-error ``HTTPException`` (a redirect) is re-raised.
    Every refused authentication, 429 and store failure that reaches the caller is
    counted here, once.
    """
    if isinstance(exc, BrokerError):
        if exc.rate_limit is not None:
            context.rate_limit = exc.rate_limit
        metrics = request.app[METRICS]
        if isinstance(exc, Unauthorized):
            metrics.auth_failures.labels(exc.reason).inc()
        elif isinstance(exc, RateLimited):
            metrics.rate_limited(exc.cause).inc()
        elif isinstance(exc, StoreUnavailable):
            metrics.store_errors.inc()
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        fallback = BadRequestError if exc.status < 500 else BrokerError
        mapped = _HTTP_ERRORS.get(exc.status, fallback)()
        mapped.status = exc.status
        if isinstance(exc, web.HTTPMethodNotAllowed):
            mapped.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return error_response(mapped)
    error_log.exception(
        "unhandled error in %s %s",
        request.method,
        redact(request.path),
        extra={"request_id": context.request_id},
        exc_info=exc,
    )
    return error_response(BrokerError())


def _account(request: web.Request, context: RequestContext, status: int, elapsed: float) -> None:
    """Count and time the request, and write its access-log line.

    The counters are bound once per (route, listener, method, status): which listener
    serves a route's paths depends on the route alone, so its template does too."""
    listener, method = context.listener, request.method
    key = (
        request.match_info.route,  # one of the registered routes: the keys stay bounded
        listener,
        method if method in STANDARD_METHODS else "OTHER",
        status,
    )
    metrics = request.app[METRICS]
    slot = metrics.request_slots.get(key)
    if slot is None:
        template = route_template(request, listener)
        slot = metrics.request_slots[key] = metrics.request_slot(listener, template, method, status)
    slot.observe(elapsed)
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = redact(request.path_qs)
    extra: dict[str, Any] = {
        "request_id": context.request_id,
        "method": request.method,
        "path": path,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "key": context.key_public_id,
        "model": context.model_id,
        "client_ip": context.client_ip or request.remote,
        "listener": listener,
    }
    trace = trace_id(request.headers.get(TRACEPARENT))
    if trace is not None:
        extra["trace_id"] = trace
    access_log.info("%s %s %s", request.method, path, status, extra=extra)
