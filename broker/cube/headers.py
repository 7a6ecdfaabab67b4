"""Which headers cross the broker in each direction (SPEC §8): hop-by-hop headers never,
the broker's own credentials never towards Cube, Cube's CORS headers never back."""

from __future__ import annotations

import functools
from collections.abc import Callable

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
    out = _kept(incoming, _forwarded)
    out["Authorization"] = token
    out["X-Request-Id"] = request_id
    out["X-Forwarded-For"] = forwarded_for
    return out


def downstream_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Cube's response headers minus hop-by-hop ones and Cube's own CORS headers (the
    broker answers CORS itself, per ``BROKER_CORS_ORIGINS``; Cube's default is ``*``)."""
    return _kept(upstream, _passed_back)


def _kept(headers: CIMultiDictProxy[str], keep: Callable[[str], bool]) -> CIMultiDict[str]:
    """The headers whose name ``keep`` keeps and that ``Connection`` does not list (the
    names it lists are hop-by-hop too, RFC 9110 §7.6.1), in order."""
    if "Connection" not in headers:
        return CIMultiDict([(k, v) for k, v in headers.items() if keep(k)])
    listed = {t.strip().lower() for v in headers.getall("Connection") for t in v.split(",")}
    return CIMultiDict([(k, v) for k, v in headers.items() if keep(k) and k.lower() not in listed])


# A verdict per header name, remembered: the same few names come on every request.
@functools.lru_cache(maxsize=1024)
def _forwarded(name: str) -> bool:
    return name.lower() not in _NOT_FORWARDED


@functools.lru_cache(maxsize=1024)
def _passed_back(name: str) -> bool:
    low = name.lower()
    return low not in HOP_BY_HOP and not low.startswith("access-control-")


def content_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """What the broker's own API passes on of Cube's answer headers: the body's type and
    length, nothing else of Cube's (its answer is the broker's answer there)."""
    return CIMultiDict(
        (k, v) for k, v in upstream.items() if k.lower() in ("content-type", "content-length")
    )
