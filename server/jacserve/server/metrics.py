"""Prometheus metrics of a server, on a registry of its own (several servers per process work).

>>> m = ServiceMetrics()
>>> m.observe_rpc("Jacobian", mode="forward", code="OK", seconds=0.01, passes=10)
>>> m.registry.get_sample_value(
...     "jacserve_requests_total", {"method": "Jacobian", "mode": "forward", "code": "OK"})
1.0
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServiceMetrics"]

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
)


class ServiceMetrics:
    """The server's counters, histograms and gauges; names follow Prometheus base units."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "jacserve_requests",
            "RPCs handled, by method, derivative mode and status code.",
            ("method", "mode", "code"),
            registry=self.registry,
        )
        self._duration = Histogram(
            "jacserve_request_duration_seconds",
            "Time from receiving an RPC to having its response ready.",
            ("method",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._passes = Counter(
            "jacserve_derivative_passes",
            "JVP/VJP passes pushed through models.",
            ("method", "mode"),
            registry=self.registry,
        )
        self._models_cached = Gauge(
            "jacserve_models_cached", "Models loaded in memory.", registry=self.registry
        )
        self._cache_bytes = Gauge(
            "jacserve_cache_bytes",
            "Estimated bytes of the loaded-model cache.",
            registry=self.registry,
        )

    def observe_rpc(
        self, method: str, *, mode: str, code: str, seconds: float, passes: int
    ) -> None:
        """Record one finished RPC. ``mode`` is ``forward``, ``reverse`` or ``none``."""
        self._requests.labels(method, mode, code).inc()
        self._duration.labels(method).observe(seconds)
        if passes:
            self._passes.labels(method, mode).inc(passes)

    def track_cache(self, stats: Callable[[], tuple[int, int]]) -> None:
        """Read the cache gauges from ``stats() -> (models, bytes)`` at each scrape."""
        self._models_cached.set_function(lambda: stats()[0])
        self._cache_bytes.set_function(lambda: stats()[1])

    def serve_http(self, host: str, port: int) -> tuple[object, int]:
        """Start the ``/metrics`` endpoint in a thread; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port
