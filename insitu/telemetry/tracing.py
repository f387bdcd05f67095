"""Distributed tracing: one tracer provider per process, W3C trace context over gRPC
metadata and inside session-stream messages, and the server layer / client interceptor.

Only W3C ``traceparent``/``tracestate`` cross process boundaries. Baggage is never
propagated: it is free-form and would be a channel for identifiers. Every exporter sits
behind :class:`~insitu.telemetry.allowlist.AllowListSpanProcessor`.

Example::

    setup_tracing("insitu-coordinator", "file:/var/lib/insitu/traces.jsonl")
    layers = [TracingLayer(), MetricsLayer(), ErrorLayer(), ...]   # outermost first
    channel = grpc.intercept_channel(secure_channel(...), TracingClientInterceptor())
    msg.trace.update(inject_to_dict())               # sender, inside a job round
    with tracer().start_as_current_span("insitu.round.train",
                                        context=extract_from_dict(msg.trace)): ...
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Tracer, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from insitu.errors import ErrorCode, InsituError
from insitu.rpc.chain import Call, Layer
from insitu.telemetry._rpc import outcome_of, principal_kind, rpc_status, split_method
from insitu.telemetry.allowlist import AllowListSpanProcessor, safe_span_name

__all__ = [
    "TRACE_KEYS",
    "TracingClientInterceptor",
    "TracingLayer",
    "add_exporter",
    "current_trace_id",
    "exporter_from_spec",
    "extract_from_dict",
    "inject_to_dict",
    "setup_tracing",
    "trace_metadata",
    "tracer",
]

TRACE_KEYS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "insitu"
_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporters: set[str] = set()


# ----------------------------------------------------------------------------- setup


def _json_line(span: ReadableSpan) -> str:
    # Compact and cheap (the SDK's to_json costs ~10x more); spans here are sanitized.
    ctx = span.context
    record = {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "ts_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "service": span.resource.attributes.get("service.name"),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def _open_append(path: str) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def exporter_from_spec(spec: str, service_name: str) -> tuple[SpanExporter, bool]:
    """The exporter named by ``spec`` and whether it wants a batching processor."""
    # Batching everywhere: serializing and writing stay off the request path.
    if spec == "console":
        return ConsoleSpanExporter(service_name, formatter=_json_line), True
    if spec.startswith("file:") and len(spec) > len("file:"):
        out = _open_append(spec[len("file:") :])
        return ConsoleSpanExporter(service_name, out=out, formatter=_json_line), True
    if spec.startswith("otlp:") and len(spec) > len("otlp:"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = spec[len("otlp:") :]
        # Plaintext only when asked for by scheme; otherwise TLS with the system roots.
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")), True
    raise InsituError(
        ErrorCode.CONFIG,
        "trace exporter must be 'none', 'console', 'file:<path>' or 'otlp:<endpoint>'",
    )


class _RecordWhenExporting(Sampler):
    """Spans are recorded only once this process has an exporter. Before that they are
    still made, with ids (so trace ids propagate and reach audit records), but carry no
    attributes and cost little. Each process decides for itself: the caller's sampled
    flag is not followed, so an exporting coordinator records calls from an SDK that
    exports nothing."""

    def __init__(self) -> None:
        self.exporting = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        state = trace.get_current_span(parent_context).get_span_context().trace_state
        decision = Decision.RECORD_AND_SAMPLE if self.exporting else Decision.DROP
        return SamplingResult(decision, None, state)

    def get_description(self) -> str:
        return "insitu.RecordWhenExporting"


def add_exporter(provider: TracerProvider, exporter: SpanExporter, *, batch: bool = False) -> None:
    """Attach ``exporter`` to ``provider`` behind the allow-list (tests pass an
    in-memory exporter here)."""
    inner = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(AllowListSpanProcessor(inner))
    if isinstance(provider.sampler, _RecordWhenExporting):
        provider.sampler.exporting = True


def setup_tracing(service_name: str, exporter: str = "none") -> TracerProvider:
    """Install the process's tracer provider (first call) and the exporter ``exporter``.

    ``exporter``: ``none`` (spans are still made, unrecorded, so trace ids reach audit
    records and propagate; nothing is exported), ``console`` (JSON lines on stdout),
    ``file:<path>`` (JSON lines appended to a 0600 file) or ``otlp:<endpoint>``; all
    batch in a background thread (``provider.shutdown()`` flushes).
    Later calls in the same process (tests run several servers in one) return the same
    provider and add their exporter if it is new.
    """
    global _provider
    if not isinstance(service_name, str) or not 0 < len(service_name) <= 64:
        raise InsituError(ErrorCode.CONFIG, "service name must be 1-64 characters")
    with _lock:
        if _provider is None:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                _provider = current  # someone (a test harness) installed one already
            else:
                # A fixed resource: no environment or host detectors, no identifiers.
                _provider = TracerProvider(
                    sampler=_RecordWhenExporting(),
                    resource=Resource({"service.name": service_name}),
                )
                trace.set_tracer_provider(_provider)
        if exporter != "none" and exporter not in _exporters:
            exp, batch = exporter_from_spec(exporter, service_name)
            add_exporter(_provider, exp, batch=batch)
            _exporters.add(exporter)
        return _provider


def tracer(provider: TracerProvider | None = None) -> Tracer:
    """insitu's tracer, from ``provider`` or the process's (proxying until set up)."""
    return trace.get_tracer(_SCOPE, tracer_provider=provider)


# ------------------------------------------------------------------------ propagation


def inject_to_dict(context: Context | None = None) -> dict[str, str]:
    """The W3C trace context of ``context`` (default: current) as a string map, for the
    ``trace`` field of session-stream messages. Empty when there is no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return {k: v for k, v in carrier.items() if k in TRACE_KEYS}


def extract_from_dict(carrier: Mapping[str, str] | None) -> Context:
    """A context whose parent is the span that ``carrier`` names (malformed or missing
    values give an empty context). Only the W3C keys are read."""
    picked = {k: str(v) for k, v in (carrier or {}).items() if k in TRACE_KEYS}
    return _PROPAGATOR.extract(picked, context=Context())


def trace_metadata(context: Context | None = None) -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata pairs."""
    return list(inject_to_dict(context).items())


def current_trace_id() -> str | None:
    """Hex trace id of the current span, or None."""
    ctx = trace.get_current_span().get_span_context()
    return format_trace_id(ctx.trace_id) if ctx.is_valid else None


# ------------------------------------------------------------------------ server side


class TracingLayer(Layer):
    """A server span per RPC, child of the caller's ``traceparent``.

    Put it outermost (before the error layer) so it sees the status the client sees and
    sets ``call.attributes["trace_id"]`` before the audit layer writes its records.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = tracer(provider)

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        carrier = {k: v for k, v in (call.context.invocation_metadata() or ()) if k in TRACE_KEYS}
        parent = _PROPAGATOR.extract(carrier, context=Context())
        service, method = split_method(call.method)
        span = self._tracer.start_span(
            safe_span_name(f"{service}/{method}"), context=parent, kind=SpanKind.SERVER
        )
        span_ctx = span.get_span_context()
        if span_ctx.is_valid:
            call.attributes["trace_id"] = format_trace_id(span_ctx.trace_id)
        ctx = trace.set_span_in_context(span, parent)
        if call.response_streaming:
            return self._stream(call, proceed, span, ctx)
        token = otel_context.attach(ctx)
        exc: BaseException | None = None
        try:
            return proceed()
        except BaseException as e:
            exc = e
            raise
        finally:
            otel_context.detach(token)
            _finish(span, call, exc)

    def _stream(
        self, call: Call, proceed: Callable[[], Any], span: Span, ctx: Context
    ) -> Iterator[Any]:
        # The context is attached around each step of the inner iterator rather than for
        # the generator's life: a cancelled stream is closed from another thread, where a
        # token attached here could not be detached.
        exc: BaseException | None = None
        inner: Iterator[Any] | None = None
        try:
            token = otel_context.attach(ctx)
            try:
                inner = iter(proceed())
            finally:
                otel_context.detach(token)
            while True:
                token = otel_context.attach(ctx)
                try:
                    item = next(inner)
                except StopIteration:
                    break
                finally:
                    otel_context.detach(token)
                yield item
        except BaseException as e:
            exc = e
            raise
        finally:
            close = getattr(inner, "close", None)
            if callable(close):
                close()
            _finish(span, call, exc)


def _finish(span: Span, call: Call, exc: BaseException | None) -> None:
    if not span.is_recording():
        span.end()
        return
    code = rpc_status(call, exc)
    service, method = split_method(call.method)
    # One set_attributes call: the SDK validates and locks per call.
    span.set_attributes({
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "rpc.grpc.status_code": code.value[0],
        "insitu.outcome": outcome_of(code),
        "insitu.principal_kind": principal_kind(call),
    })  # fmt: skip
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR))  # no description: it may quote values
    span.end()


# ------------------------------------------------------------------------ client side


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class TracingClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """A client span per call, injected as ``traceparent`` metadata; the span ends when
    the call completes (for streams: when the response stream ends).

    Example::

        channel = grpc.intercept_channel(secure_channel(...), TracingClientInterceptor())
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = tracer(provider)

    def _start(self, details: grpc.ClientCallDetails) -> tuple[Span, grpc.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span = self._tracer.start_span(safe_span_name(method.lstrip("/")), kind=SpanKind.CLIENT)
        metadata = [(k, v) for k, v in (details.metadata or ()) if k not in TRACE_KEYS]
        metadata.extend(inject_to_dict(trace.set_span_in_context(span)).items())
        new = _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        return span, new

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        span, new_details = self._start(details)
        try:
            call = continuation(new_details, request)
        except BaseException:
            _end_client(span, new_details.method, None)
            raise
        call.add_done_callback(lambda done: _end_client(span, new_details.method, done))
        return call

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)


def _end_client(span: Span, method: str | bytes, done: Any) -> None:
    if not span.is_recording():
        span.end()
        return
    try:
        code = done.code() if done is not None else None
    except Exception:
        code = None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    service, name = split_method(method.decode() if isinstance(method, bytes) else method)
    span.set_attributes({
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "rpc.grpc.status_code": code.value[0],
        "insitu.outcome": outcome_of(code),
    })  # fmt: skip
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
