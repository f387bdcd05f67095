"""Observability without seeing any patient: traces, metrics and logs for insitu
processes, each with its own guard against identifiers and secrets.

- :mod:`~insitu.telemetry.tracing`: OpenTelemetry setup, the server :class:`TracingLayer`,
  the client :class:`TracingClientInterceptor`, trace context in session messages;
  spans leave only through the attribute allow-list (:mod:`~insitu.telemetry.allowlist`).
- :mod:`~insitu.telemetry.metrics`: the process's Prometheus registry, the
  :class:`MetricsLayer`, and the loopback ``/metrics`` endpoint.
- :mod:`~insitu.telemetry.logs`: JSON logs, redacted (:mod:`~insitu.telemetry.redaction`).

Example::

    from insitu.telemetry import (MetricsLayer, TracingLayer, process_metrics,
                                  setup_logging, setup_tracing, start_metrics_server)

    setup_logging("INFO", capture_uncaught=True)
    setup_tracing("insitu-coordinator", settings.trace_exporter)   # "none" by default
    metrics_server, port = start_metrics_server(settings.metrics_listen)
    # outermost, before the error layer, so they see the status the client sees and
    # the trace id is on the call before the audit layer writes its records:
    layers = [TracingLayer(), MetricsLayer(), ErrorLayer(), AuthnLayer(...), ...]
"""

from insitu.telemetry.allowlist import ALLOWED_ATTRIBUTES, AllowListSpanProcessor
from insitu.telemetry.logs import setup_logging
from insitu.telemetry.metrics import (
    InsituMetrics,
    MetricsLayer,
    MetricsServer,
    process_metrics,
    start_metrics_server,
)
from insitu.telemetry.redaction import forget_secret, redact, register_secret
from insitu.telemetry.tracing import (
    TracingClientInterceptor,
    TracingLayer,
    add_exporter,
    current_trace_id,
    extract_from_dict,
    inject_to_dict,
    setup_tracing,
    trace_metadata,
    tracer,
)

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "AllowListSpanProcessor",
    "InsituMetrics",
    "MetricsLayer",
    "MetricsServer",
    "TracingClientInterceptor",
    "TracingLayer",
    "add_exporter",
    "current_trace_id",
    "extract_from_dict",
    "forget_secret",
    "inject_to_dict",
    "process_metrics",
    "redact",
    "register_secret",
    "setup_logging",
    "setup_tracing",
    "start_metrics_server",
    "trace_metadata",
    "tracer",
]
