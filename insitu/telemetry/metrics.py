"""Prometheus metrics of one insitu process, on a dedicated registry, and the loopback
``/metrics`` endpoint that serves it (plus any other registries, e.g. serving's).

Labels come only from small fixed vocabularies: RPC method names from the method table,
gRPC status code names, round phases, identity *kinds*, Vault operation names. A value
outside its vocabulary is recorded as ``other``, so no identifier, payload or feature
value can become a label (or a new time series).

Example::

    m = process_metrics()
    layers = [TracingLayer(), MetricsLayer(m), ErrorLayer(), ...]
    m.watch_cert_expiry("service", lambda: creds.info.not_after)
    with m.vault_call("sign"):
        keys.sign("audit-checkpoint", note)
    server, port = start_metrics_server("127.0.0.1:9464", [m.registry, serving.registry])
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from insitu.rpc.chain import Call, Layer
from insitu.rpc.methods import METHODS
from insitu.telemetry._rpc import rpc_status
from insitu.telemetry.endpoint import MetricsServer, start_metrics_server

__all__ = [
    "IDENTITY_KINDS",
    "PHASES",
    "ROUND_OUTCOMES",
    "VAULT_OPERATIONS",
    "InsituMetrics",
    "MetricsLayer",
    "MetricsServer",
    "label_vocabularies",
    "process_metrics",
    "start_metrics_server",
]

OTHER = "other"
PHASES = frozenset({"train", "evaluate", "query"})
ROUND_OUTCOMES = frozenset({"ok", "failed"})
DIRECTIONS = frozenset({"up", "down"})
IDENTITY_KINDS = frozenset({"site", "user", "service"})
# KeyService's Vault-calling operations.
VAULT_OPERATIONS = frozenset({
    "login", "sign_csr", "revoke", "crl", "ca_bundle", "sign", "verify", "public_keys",
    "generate_data_key", "unwrap", "rewrap", "rotate", "key_version", "kv_put", "kv_get",
})  # fmt: skip
_CODES = frozenset(c.name for c in grpc.StatusCode)
_MAX_CACHED = 4096

_RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
)  # fmt: skip
_ROUND_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def _pick(value: str, vocabulary: Iterable[str]) -> str:
    return value if value in vocabulary else OTHER


def _safe(fn: Callable[[], float | None]) -> Callable[[], float]:
    # A callback that raises would fail the whole scrape; report NaN instead.
    def read() -> float:
        try:
            v = fn()
        except Exception:
            return math.nan
        return math.nan if v is None else float(v)

    return read


class InsituMetrics:
    """The metrics of one process. Tests make their own; servers share
    :func:`process_metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.methods = frozenset(m.lstrip("/") for m in METHODS)
        self._rpc_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}
        self.rpc_requests = Counter(
            "insitu_rpc_requests",
            "RPCs served, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "insitu_rpc_latency_seconds",
            "Server-side RPC latency (streams: their lifetime)",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.round_duration = Histogram(
            "insitu_round_duration_seconds",
            "Wall time of a federated round phase",
            buckets=_ROUND_BUCKETS,
            registry=r,
        )
        self.round_sites = Gauge(
            "insitu_round_sites",
            "Sites in the latest round, by phase and outcome",
            ["phase", "outcome"],
            registry=r,
        )
        self.round_bytes = Counter(
            "insitu_round_bytes",
            "Bytes of round messages, down to sites and up from them",
            ["direction"],
            registry=r,
        )
        self.audit_append = Histogram(
            "insitu_audit_append_seconds",
            "Durable audit append latency",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "insitu_audit_checkpoint_age_seconds",
            "Seconds since the latest signed checkpoint",
            registry=r,
        )
        self.cert_expiry = Gauge(
            "insitu_cert_expiry_seconds",
            "Seconds until this process's certificate expires",
            ["identity_kind"],
            registry=r,
        )
        self.vault_latency = Histogram(
            "insitu_vault_request_seconds",
            "Vault/OpenBao call latency by operation",
            ["operation"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.vault_errors = Counter(
            "insitu_vault_errors", "Failed Vault/OpenBao calls by operation",
            ["operation"], registry=r)  # fmt: skip

    # -- RPC ---------------------------------------------------------------------------

    def method_label(self, full_method: str) -> str:
        name = full_method.lstrip("/")
        return name if name in self.methods else OTHER

    def observe_rpc(self, full_method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (full_method, code)
        children = self._rpc_children.get(key)
        if children is None:
            # labels() costs a lock and a dict walk per call; resolve once per pair.
            method = self.method_label(full_method)
            children = (self.rpc_requests.labels(method, _pick(code.name, _CODES)),
                        self.rpc_latency.labels(method))  # fmt: skip
            if len(self._rpc_children) < _MAX_CACHED:
                self._rpc_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # -- rounds ------------------------------------------------------------------------

    def observe_round(
        self,
        phase: str,
        seconds: float,
        *,
        sites_ok: int,
        sites_failed: int,
        bytes_down: int = 0,
        bytes_up: int = 0,
    ) -> None:
        """One finished round phase: its wall time, how many sites took part, bytes."""
        p = _pick(phase, PHASES)
        self.round_duration.observe(seconds)
        self.round_sites.labels(p, "ok").set(sites_ok)
        self.round_sites.labels(p, "failed").set(sites_failed)
        self.add_round_bytes("down", bytes_down)
        self.add_round_bytes("up", bytes_up)

    def add_round_bytes(self, direction: str, n: int) -> None:
        if n > 0:
            self.round_bytes.labels(_pick(direction, DIRECTIONS)).inc(n)

    # -- audit -------------------------------------------------------------------------

    @contextmanager
    def audit_append_timer(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.audit_append.observe(time.perf_counter() - start)

    def watch_checkpoint_age(self, last_checkpoint_unix: Callable[[], float | None]) -> None:
        """Report the age of the checkpoint whose UNIX time ``last_checkpoint_unix`` gives
        at every scrape (NaN while there is none)."""

        def age() -> float | None:
            ts = last_checkpoint_unix()
            return None if ts is None else max(0.0, time.time() - ts)

        self.checkpoint_age.set_function(_safe(age))

    # -- identity ----------------------------------------------------------------------

    def watch_cert_expiry(
        self, identity_kind: str, not_after: Callable[[], datetime | None]
    ) -> None:
        """Report seconds to ``not_after()`` at every scrape, labelled by identity kind
        (``site``/``user``/``service``), never by name."""

        def left() -> float | None:
            end = not_after()
            return None if end is None else (end - datetime.now(UTC)).total_seconds()

        self.cert_expiry.labels(_pick(identity_kind, IDENTITY_KINDS)).set_function(_safe(left))

    # -- Vault -------------------------------------------------------------------------

    @contextmanager
    def vault_call(self, operation: str) -> Iterator[None]:
        """Time one Vault call; an exception counts as an error (and propagates)."""
        op = _pick(operation, VAULT_OPERATIONS)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.vault_errors.labels(op).inc()
            raise
        finally:
            self.vault_latency.labels(op).observe(time.perf_counter() - start)

    # -- more collectors ---------------------------------------------------------------

    def register_collector(self, collector: Collector) -> None:
        """Expose another collector (e.g. a custom one) on this process's registry."""
        self.registry.register(collector)


_process_lock = threading.Lock()
_process: InsituMetrics | None = None


def process_metrics() -> InsituMetrics:
    """The process-wide metrics (created on first use)."""
    global _process
    with _process_lock:
        if _process is None:
            _process = InsituMetrics()
        return _process


class MetricsLayer(Layer):
    """Counts and times every RPC by method and status. Put it outside the error layer
    so it records the status the client sees."""

    def __init__(self, metrics: InsituMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else process_metrics()

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        if call.response_streaming:
            return self._stream(call, proceed, start)
        exc: BaseException | None = None
        try:
            return proceed()
        except BaseException as e:
            exc = e
            raise
        finally:
            self.metrics.observe_rpc(
                call.method, rpc_status(call, exc), time.perf_counter() - start
            )

    def _stream(self, call: Call, proceed: Callable[[], Any], start: float) -> Iterator[Any]:
        exc: BaseException | None = None
        try:
            yield from proceed()
        except BaseException as e:
            exc = e
            raise
        finally:
            self.metrics.observe_rpc(
                call.method, rpc_status(call, exc), time.perf_counter() - start
            )


def label_vocabularies() -> Mapping[str, frozenset[str]]:
    """Every label name insitu's own metrics use, with its allowed values (for tests)."""
    return {
        "method": frozenset(m.lstrip("/") for m in METHODS) | {OTHER},
        "code": _CODES | {OTHER},
        "phase": PHASES | {OTHER},
        "outcome": ROUND_OUTCOMES,
        "direction": DIRECTIONS | {OTHER},
        "identity_kind": IDENTITY_KINDS | {OTHER},
        "operation": VAULT_OPERATIONS | {OTHER},
    }
