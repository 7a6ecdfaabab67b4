"""Prometheus metrics, held in app state (never the global default registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Every metric the broker exports (SPEC §9), on a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        r = self.registry
        self.requests = Counter(
            "broker_requests_total",
            "HTTP requests answered.",
            ["listener", "route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "broker_request_duration_seconds",
            "Time to answer a request.",
            ["listener", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "broker_upstream_duration_seconds",
            "Time Cube took to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_minted = Counter(
            "broker_tokens_minted_total", "Tokens minted by this replica.", registry=r
        )
        self.token_cache_hits = Counter(
            "broker_token_cache_hits_total", "Token requests served from a cache.", registry=r
        )
        self.auth_failures = Counter(
            "broker_auth_failures_total", "Refused authentications.", ["reason"], registry=r
        )
        self.store_errors = Counter(
            "broker_store_errors_total", "Store calls that failed.", registry=r
        )
        self.upstream_errors = Counter(
            "broker_upstream_errors_total", "Failed calls to Cube.", ["kind"], registry=r
        )
        self.meta_cache = Counter(
            "broker_meta_cache_total",
            "Proxied /meta calls answered from memory (hit) or by Cube (miss).",
            ["result"],
            registry=r,
        )
        for result in ("hit", "miss"):
            self.meta_cache.labels(result)  # both exported from the start, at 0

    def observe_request(
        self, listener: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        """Count and time one answered request; labelled children are looked up once."""
        if method not in _METHODS:
            method = "OTHER"  # clients choose methods: keep the label set bounded
        key = (listener, route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(listener, route, method, str(status)),
                self.request_duration.labels(listener, route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
