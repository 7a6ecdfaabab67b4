"""CORS for browser dashboards (SPEC §8), and the ``X-Request-Id``, ``Server`` and
``RateLimit-*`` (SPEC §4) answer headers.

All are set by :func:`finish_answer` just before an answer's headers are sent: by the
broker's request context (:mod:`broker.http.answer`) for every answer a handler returns
(error answers included), and by :meth:`broker.cube.client.CubeClient.relay` for a
streamed proxy answer, which it prepares itself; so are a decision's refusal headers
(:func:`broker.http.decision.name_refusal`). A plain call, not aiohttp's
``on_response_prepare`` signal: that costs an await and a loop over its receivers on
every answer.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from broker.http.context import X_REQUEST_ID
from broker.http.decision import is_decision, name_refusal
from broker.state import CONTEXT, SETTINGS
from broker.store import RateLimitState

#: What the broker tells of itself in ``Server`` (aiohttp's default names the versions
#: of Python and aiohttp).
SERVER_NAME = "cube-token-broker"

ALLOWED_HEADERS = (
    "Authorization, Content-Type, X-API-KEY, X-Semantic-Model, X-Request-Id, "
    "traceparent, tracestate"
)
#: What a browser script may read of an answer.
EXPOSED_HEADERS = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
ALLOWED_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE = "600"


def is_preflight(request: web.Request) -> bool:
    """A CORS preflight: answered 204 on any path, its headers set by :func:`finish_answer`.
    Never a decision request (:mod:`broker.http.decision`): that is a proxy asking about
    a browser's request, which the proxy's own CORS answers, not the broker's."""
    return (
        request.method == "OPTIONS"
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        and not is_decision(request.path)
    )


def rate_limit_headers(state: RateLimitState) -> dict[str, str]:
    """SPEC §4's headers for a key's rate limit, Kong's names."""
    return {
        "RateLimit-Limit": str(state.limit),
        "RateLimit-Remaining": str(state.remaining),
        "RateLimit-Reset": str(state.reset),
    }


def finish_answer(request: web.Request, response: web.StreamResponse) -> None:
    """Set the broker's own answer headers on ``response``, not yet prepared."""
    headers = response.headers
    headers[hdrs.SERVER] = SERVER_NAME
    context = request[CONTEXT]
    headers[X_REQUEST_ID] = context.request_id
    if context.rate_limit is not None:
        headers.update(rate_limit_headers(context.rate_limit))
    if response.status >= 400 and is_decision(request.path):
        name_refusal(response)
    origin = request.headers.get(hdrs.ORIGIN)
    allowed = request.app[SETTINGS].cors_origins
    if origin is None or not allowed:
        return
    headers.add(hdrs.VARY, "Origin")  # the answer depends on it, allowed or not
    if origin not in allowed:
        return
    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
    if is_preflight(request):
        headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ALLOWED_METHODS
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOWED_HEADERS
        headers[hdrs.ACCESS_CONTROL_MAX_AGE] = PREFLIGHT_MAX_AGE
