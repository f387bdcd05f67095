"""One call per process: tracing exporter, the /metrics endpoint, and the callbacks for
checkpoint age and certificate expiry (labelled by identity kind, never by name)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from prometheus_client.registry import Collector

from insitu.audit import AuditLog
from insitu.telemetry.endpoint import MetricsServer, start_metrics_server
from insitu.telemetry.metrics import process_metrics
from insitu.telemetry.tracing import setup_tracing

__all__ = ["start_observability"]


def _checkpoint_age(log: AuditLog) -> Callable[[], float | None]:
    seen = {"size": -1, "at": 0.0}
    lock = threading.Lock()

    def last_checkpoint_unix() -> float | None:
        cp = log.latest_checkpoint()
        if cp is None:
            return None
        with lock:
            if cp.size != seen["size"]:
                seen["size"], seen["at"] = cp.size, time.time()
            return seen["at"]

    return last_checkpoint_unix


def start_observability(service: str, metrics_listen: str, trace_exporter: str,
                        audit_log: AuditLog, cert_not_after: Callable[[], datetime | None],
                        identity_kind: str,
                        extra_registries: Sequence[Collector] = ()) -> tuple[MetricsServer, int]:
    setup_tracing(service, trace_exporter)
    metrics = process_metrics()
    metrics.watch_checkpoint_age(_checkpoint_age(audit_log))
    metrics.watch_cert_expiry(identity_kind, cert_not_after)
    server, port = start_metrics_server(metrics_listen)
    for r in extra_registries:
        server.add_registry(r)
    return server, port
