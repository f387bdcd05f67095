"""Prometheus metrics of the serving path, on a dedicated registry.

A dedicated :class:`CollectorRegistry` (not the process-global one) lets several runtimes
live in one process (tests, the demo) and lets the site daemon serve exactly these on its
local metrics port. Labels are ``model``, ``version`` and ``outcome`` only: never caller
identities, request ids or values, so no PHI can reach a label.

Example::

    metrics = ServingMetrics()
    metrics.request("mlp", "3", "ok", seconds=0.0012)
    body = metrics.exposition()        # text format for GET /metrics
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServingMetrics:
    """Counters and histograms for one serving runtime."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "insitu_serving_requests",
            "Predict requests by model, version and outcome",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "insitu_serving_request_latency_seconds",
            "End-to-end Predict latency inside the site (validation, queue, inference)",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "insitu_serving_rows",
            "Rows predicted by model and version",
            ["model", "version"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "insitu_serving_batch_size",
            "Rows per executed batch (after dynamic batching)",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "insitu_serving_queue_depth",
            "Requests waiting in the dynamic batcher's queue",
            ["model", "version"],
            registry=self.registry,
        )

    def request(
        self, model: str, version: str, outcome: str, *, seconds: float, rows: int = 0
    ) -> None:
        """Record one finished request (``outcome``: "ok" or an ErrorCode value)."""
        self.requests.labels(model, version, outcome).inc()
        if outcome == "ok":
            self.latency.labels(model, version).observe(seconds)
            self.rows.labels(model, version).inc(rows)

    def batch(self, model: str, version: str, rows: int) -> None:
        self.batch_size.labels(model, version).observe(rows)

    def set_queue_depth(self, model: str, version: str, depth: int) -> None:
        self.queue_depth.labels(model, version).set(depth)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return bytes(generate_latest(self.registry))
