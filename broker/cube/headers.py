"""Which headers cross the broker in each direction (SPEC §8): hop-by-hop headers never,
the broker's own credentials never towards Cube, Cube's CORS headers never back."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers that never reach Cube: credentials of the broker's own (and the
#: browser's cookies for the broker's site, which Cube has no use for), what the broker
#: sets itself, and ``Content-Encoding`` (aiohttp hands the broker the body decoded).
_NOT_FORWARDED = HOP_BY_HOP | {
    "cookie",
    "host",
    "content-length",
    "content-encoding",
    "authorization",
    "x-api-key",
    "x-athena-key",
    "apikey",
    "x-semantic-model",
    "x-request-id",
    "origin",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
}


def upstream_headers(
    incoming: CIMultiDictProxy[str], token: str, request_id: str, forwarded_for: str
) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop ones, the broker's credentials and forwarding
    headers, plus the Cube token, the request ID and ``X-Forwarded-For`` (see
    :func:`broker.http.requests.forwarded_for`)."""
    out = incoming.copy()
    _drop(out, _NOT_FORWARDED)
    out["Authorization"] = token
    out["X-Request-Id"] = request_id
    out["X-Forwarded-For"] = forwarded_for
    return out


def downstream_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Cube's response headers minus hop-by-hop ones and Cube's own CORS headers (the
    broker answers CORS itself, per ``BROKER_CORS_ORIGINS``; Cube's default is ``*``)."""
    out = upstream.copy()
    _drop(out, HOP_BY_HOP, cors=True)
    return out


def _drop(headers: CIMultiDict[str], names: frozenset[str], *, cors: bool = False) -> None:
    """Remove, in place and every occurrence, the headers named in ``names`` (lower case),
    those ``Connection`` lists, which are hop-by-hop too (RFC 9110 §7.6.1), and with
    ``cors`` every ``Access-Control-*`` one."""
    listed: frozenset[str] | tuple[()] = ()
    if "Connection" in headers:
        listed = frozenset(
            t.strip().lower() for value in headers.getall("Connection") for t in value.split(",")
        )
    for name in [
        k
        for k in headers.keys()  # noqa: SIM118  (a list: the loop below changes headers)
        if (low := k.lower()) in names
        or low in listed
        or (cors and low.startswith("access-control-"))
    ]:
        headers.popall(name, None)


def content_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """What the broker's own API passes on of Cube's answer headers: the body's type and
    length, nothing else of Cube's (its answer is the broker's answer there)."""
    return CIMultiDict(
        (k, v) for k, v in upstream.items() if k.lower() in ("content-type", "content-length")
    )
