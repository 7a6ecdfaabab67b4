"""Prometheus metrics, held in app state (never the global default registry)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker import __version__

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


STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Tally(Collector):
    """A labelled counter, or with ``buckets`` a labelled histogram, kept in plain dicts
    and lists and exported when Prometheus scrapes: for what every request updates.

    prometheus_client's own take a lock and walk the buckets in Python on every update;
    these are only ever updated and read on the event loop's thread (the ``/metrics``
    handler scrapes there too), so a dict lookup and a bisection do."""

    def __init__(
        self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...] = ()
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labels = labels
        self._bounds = buckets
        self._les = [*(repr(float(b)) for b in buckets), "+Inf"]
        #: per label values: a one-element list, so a bound updater can hold the cell
        self._counts: dict[tuple[str, ...], list[int]] = {}
        #: per label values: the count in each bucket (the last: above every bound), sum
        self._observed: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._children: dict[tuple[str, ...], Child] = {}

    def child(self, *values: str) -> Child:
        """The child of these label values, made once (what ``labels()`` gives)."""
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = Child(self, values)
        return found

    def inc(self, values: tuple[str, ...]) -> None:
        self.count_cell(values)[0] += 1

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        counts, total = self.observed_cells(values)
        counts[bisect.bisect_left(self._bounds, seconds)] += 1
        total[0] += seconds

    def count_cell(self, values: tuple[str, ...]) -> list[int]:
        """The count of these label values, as a one-element list (made at 0 once)."""
        cell = self._counts.get(values)
        if cell is None:
            cell = self._counts[values] = [0]
        return cell

    def observed_cells(self, values: tuple[str, ...]) -> tuple[list[int], list[float]]:
        """The bucket counts and the one-element sum of these label values."""
        seen = self._observed.get(values)
        if seen is None:
            seen = self._observed[values] = ([0] * (len(self._bounds) + 1), [0.0])
        return seen

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def collect(self) -> Iterable[Metric]:
        if not self._bounds:
            counter = CounterMetricFamily(self._name, self._doc, labels=self._labels)
            for values, (count,) in self._counts.items():
                counter.add_metric(list(values), count)
            return [counter]
        histogram = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for values, (counts, total) in self._observed.items():
            cumulative, running = [], 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            histogram.add_metric(list(values), cumulative, total[0])
        return [histogram]


class Child:
    """One labelled child of a :class:`_Tally` (what ``labels()`` is to prometheus_client's
    own metrics): ``inc`` for a counter, ``observe`` for a histogram."""

    __slots__ = ("_tally", "_values")

    def __init__(self, tally: _Tally, values: tuple[str, ...]) -> None:
        self._tally = tally
        self._values = values

    def inc(self) -> None:
        self._tally.inc(self._values)

    def observe(self, seconds: float) -> None:
        self._tally.observe(self._values, seconds)


class RequestSlot:
    """What one kind of answer updates — its count in ``broker_requests`` and its duration
    histogram — bound once, so that answering a request is two increments and a
    bisection (:meth:`Metrics.request_slot`)."""

    __slots__ = ("_bounds", "_buckets", "_count", "_total")

    def __init__(self, requests: _Tally, durations: _Tally, labels: tuple[str, ...]) -> None:
        self._count = requests.count_cell(labels)
        self._buckets, self._total = durations.observed_cells(labels[:2])
        self._bounds = durations.bounds

    def observe(self, seconds: float) -> None:
        self._count[0] += 1
        self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self._total[0] += seconds


class KeyFeed(Protocol):
    """What the key cache tells about its change feed (:class:`broker.keys.cache.KeyCache`)."""

    feed_failures: int

    def feed_age(self) -> float: ...


class Reloads(Protocol):
    """What the registry watcher tells about its reloads (``RegistryWatcher``)."""

    last_reload: float
    reload_failures: int


class _Scraped(Collector):
    """Families computed when Prometheus scrapes, from the service that owns the state."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()


class Metrics:
    """Every metric the broker exports (SPEC §9), on a private registry, with the
    standard ``process_*`` and ``python_*`` collectors.

    ``model`` labels carry asset IDs of the registry only (a model is looked up before
    anything is counted against it), so their number stays bounded.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge(
            "broker_build_info", "The broker's version; always 1.", ["version"], registry=r
        ).labels(__version__).set(1)
        self._requests = _Tally(
            "broker_requests", "HTTP requests answered.", ["listener", "route", "method", "status"]
        )
        self._request_duration = _Tally(
            "broker_request_duration_seconds",
            "Time to answer a request.",
            ["listener", "route"],
            _LATENCY_BUCKETS,
        )
        upstream_duration = _Tally(
            "broker_upstream_duration_seconds",
            "Time Cube took to start its answer, by semantic model.",
            ["model"],
            _LATENCY_BUCKETS,
        )
        tokens_minted = _Tally(
            "broker_tokens_minted", "Tokens minted by this replica, by semantic model.", ["model"]
        )
        token_cache_hits = _Tally(
            "broker_token_cache_hits",
            "Token requests served from a cache (this replica's or the store's), by model.",
            ["model"],
        )
        for tally in (
            self._requests,
            self._request_duration,
            upstream_duration,
            tokens_minted,
            token_cache_hits,
        ):
            r.register(tally)
        #: By model: ``.observe(seconds)``, ``.inc()``.
        self.upstream_duration = upstream_duration.child
        self.tokens_minted = tokens_minted.child
        self.token_cache_hits = token_cache_hits.child
        self.auth_failures = Counter(
            "broker_auth_failures_total", "Refused authentications.", ["reason"], registry=r
        )
        rate_limited = _Tally(
            "broker_rate_limited",
            "Requests refused with 429, by cause: key_limit (the key's rate limit), "
            "brute_force (the guard), body_memory (the bound on bodies in memory).",
            ["cause"],
        )
        r.register(rate_limited)
        self.rate_limited = rate_limited.child
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
        #: :meth:`request_slot` per (route, listener, method, status), kept by the
        #: request context (:mod:`broker.http.answer`): bounded, as each part is.
        self.request_slots: dict[tuple[object, str, str, int], RequestSlot] = {}

    def request_slot(self, listener: str, route: str, method: str, status: int) -> RequestSlot:
        """The counters of answers ``status`` to ``method`` on ``route`` (a template) of
        ``listener``; a method outside the standard ones is counted as ``OTHER``."""
        method = method if method in STANDARD_METHODS else "OTHER"  # keep the label set bounded
        labels = (listener, route, method, str(status))
        return RequestSlot(self._requests, self._request_duration, labels)

    def observe_request(
        self, listener: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        """Count and time one answered request (:meth:`request_slot` binds this once)."""
        self.request_slot(listener, route, method, status).observe(seconds)

    def follow_key_feed(self, feed: KeyFeed) -> None:
        """Export the key cache's change feed: its age, computed at each scrape, and the
        count of polls that failed."""

        def families() -> Iterable[Metric]:
            yield GaugeMetricFamily(
                "broker_key_feed_age_seconds",
                "Seconds since the store's key change feed last answered (since start-up "
                "until it first does); above about 1 s, cached keys are not trusted.",
                value=feed.feed_age(),
            )
            yield CounterMetricFamily(
                "broker_key_feed_failures",
                "Polls of the store's key change feed that failed.",
                value=feed.feed_failures,
            )

        self.registry.register(_Scraped(families))

    def follow_reloads(self, reloads: Reloads) -> None:
        """Export the model registry's reloads: when the last one succeeded, and how many
        attempts failed."""

        def families() -> Iterable[Metric]:
            yield GaugeMetricFamily(
                "broker_models_last_reload_timestamp_seconds",
                "Unix time the model registry was last loaded successfully.",
                value=reloads.last_reload,
            )
            yield CounterMetricFamily(
                "broker_models_reload_failures",
                "Reload attempts of the model registry that failed (the last good "
                "registry stays in use; while it is broken every poll retries).",
                value=reloads.reload_failures,
            )

        self.registry.register(_Scraped(families))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
