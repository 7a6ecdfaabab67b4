"""Decision mode (SPEC §8): what a proxy that is already there (nginx ``auth_request``,
ingress-nginx ``auth-url``, Traefik ForwardAuth, Envoy's HTTP ``ext_authz``) asks the
broker at ``/auth/v1/cube``, and how its answer reads to such a proxy.

The request decided on comes in one of three forms: ``X-Original-URI`` (and
``X-Original-Method``), as nginx and ingress-nginx send it; ``X-Forwarded-Uri`` (and
``X-Forwarded-Method``), as Traefik does; or the path below ``/auth/v1/cube`` with the
request's own method, as Envoy's ``path_prefix`` does. A missing method header means the
request's own method (an nginx subrequest's). Every form present must name the same
request, else the request is refused (400): these proxies pass the client's own headers
on, so a client could otherwise add the other convention's header and be judged for a
request it is not making.

nginx's ``auth_request`` turns every status but 2xx, 401 and 403 into a 500, and keeps
none of the body; so each refusal also carries its status in ``X-Broker-Status`` and its
JSON body in ``X-Broker-Error`` (both ASCII, one line), from which ``deploy/nginx`` answers
the caller with SPEC §3's status and body.
"""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from broker.errors import BadRequest, NotFound

DECISION_PATH = "/auth/v1/cube"
STATUS_HEADER = "X-Broker-Status"
ERROR_HEADER = "X-Broker-Error"
_FORMS = (("X-Original-URI", "X-Original-Method"), ("X-Forwarded-Uri", "X-Forwarded-Method"))


def is_decision(path: str) -> bool:
    return path == DECISION_PATH or path.startswith(DECISION_PATH + "/")


def original_request(request: web.Request) -> tuple[str, str, str]:
    """The method, the decoded path and the raw path and query (as sent) of the request
    the calling proxy decides on. Raises ``BadRequest`` when none is named, the forms
    disagree or the target is not a path; ``NotFound`` when this request's own path is not
    below :data:`DECISION_PATH` as sent (an encoded prefix names nothing)."""
    if not request.raw_path.startswith(DECISION_PATH):
        raise NotFound()
    named: set[tuple[str, str]] = set()
    below = request.raw_path[len(DECISION_PATH) :]
    if below and not below.startswith("?"):
        named.add((request.method, below))
    for uri_header, method_header in _FORMS:
        uri = request.headers.get(uri_header)
        if uri is not None:
            named.add((request.headers.get(method_header) or request.method, uri))
    if not named:
        raise BadRequest(
            "Name the request to decide on: X-Original-URI, X-Forwarded-Uri, "
            f"or the path below {DECISION_PATH}."
        )
    if len(named) > 1:
        raise BadRequest("The request to decide on is named more than once, differently.")
    method, target = named.pop()
    if not target.startswith("/"):
        raise BadRequest("The request to decide on must be named by its path.")
    path, _, query = target.partition("?")
    try:
        decoded = URL.build(path=path, query_string=query, encoded=True).path
    except ValueError:
        raise BadRequest("The request to decide on is not a valid path.") from None
    return method, decoded, target


def name_refusal(response: web.StreamResponse) -> None:
    """A decision's refusal names its status and body in headers too (see above)."""
    response.headers[STATUS_HEADER] = str(response.status)
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, bytes) and body.isascii() and b"\n" not in body and b"\r" not in body:
        response.headers[ERROR_HEADER] = body.decode("ascii")
