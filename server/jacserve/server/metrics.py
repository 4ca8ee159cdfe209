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

from jacserve.server.tenants import TenantLabels

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
        self._in_flight = Gauge(
            "jacserve_requests_in_flight", "RPCs being handled now.", registry=self.registry
        )
        self._queue_wait = Histogram(
            "jacserve_queue_wait_seconds",
            "Time a request waited for a free worker process.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._restarts = Counter(
            "jacserve_worker_restarts",
            "Worker processes replaced, by reason (deadline, cancelled, crash, protocol error, ...).",
            ("reason",),
            registry=self.registry,
        )
        self._busy = Gauge(
            "jacserve_workers_busy",
            "Worker processes running a request now.",
            registry=self.registry,
        )
        self._workers = Gauge(
            "jacserve_workers", "Worker processes configured.", registry=self.registry
        )
        self._models = Gauge(
            "jacserve_models_registered",
            "Models described in the frontend's catalog.",
            registry=self.registry,
        )
        self._compilations = Counter(
            "jacserve_compilations",
            "Compiled Jacobian programs built in compile workers, by outcome: ready (used), "
            "slower (than eager, not used), failed (did not build or verify), timeout.",
            ("outcome",),
            registry=self.registry,
        )
        self._compile_seconds = Histogram(
            "jacserve_compile_seconds",
            "Time to build and verify one compiled program in a compile worker.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self._tenant_labels = TenantLabels(limit=32)
        self._tenant_requests = Counter(
            "jacserve_tenant_requests",
            "RPCs by the caller's tenant (the first 32 tenants seen; later ones count as "
            "'other') and status code.",
            ("tenant", "code"),
            registry=self.registry,
        )
        self._catalog_lookups = Counter(
            "jacserve_model_cache_lookups",
            "Model lookups by result: hit (described already) or miss (loaded in a worker).",
            ("result",),
            registry=self.registry,
        )

    def observe_rpc(
        self, method: str, *, mode: str, code: str, seconds: float, passes: int, tenant: str = ""
    ) -> None:
        """Record one finished RPC. ``mode`` is ``forward``, ``reverse`` or ``none``;
        ``tenant`` is counted under a bounded label (:class:`TenantLabels`)."""
        self._requests.labels(method, mode, code).inc()
        if tenant:
            self._tenant_requests.labels(self._tenant_labels.label(tenant), code).inc()
        self._duration.labels(method).observe(seconds)
        if passes:
            self._passes.labels(method, mode).inc(passes)

    def in_flight(self, change: int) -> None:
        """Count an RPC in (+1) or out (-1)."""
        self._in_flight.inc(change)

    def worker_event(self, kind: str, value: object) -> None:
        """Record a worker-pool event: ``queue_wait`` seconds, ``restart`` reason, ``busy``
        count, ``compilation`` (outcome, seconds)."""
        if kind == "queue_wait":
            self._queue_wait.observe(float(value))  # type: ignore[arg-type]
        elif kind == "restart":
            self._restarts.labels(str(value)).inc()
        elif kind == "busy":
            self._busy.set(float(value))  # type: ignore[arg-type]
        elif kind == "compilation":
            outcome, seconds = value  # type: ignore[misc]
            self._compilations.labels(str(outcome)).inc()
            self._compile_seconds.observe(float(seconds))

    def model_lookup(self, hit: bool) -> None:
        """Count a catalog lookup."""
        self._catalog_lookups.labels("hit" if hit else "miss").inc()

    def track_models(self, count: Callable[[], int], workers: int) -> None:
        """Read the registered-model gauge from ``count()`` at each scrape."""
        self._models.set_function(count)
        self._workers.set(workers)

    def serve_http(self, host: str, port: int) -> tuple[object, int]:
        """Start the ``/metrics`` endpoint in a thread; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port
