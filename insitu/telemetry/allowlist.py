"""The span allow-list: what a span may carry when it leaves the process.

Every exporter insitu configures sits behind :class:`AllowListSpanProcessor`, which hands
the exporter a *copy* of each finished span holding only:

- attributes whose key is in :data:`ALLOWED_ATTRIBUTES` and whose value passes that
  key's check (a fixed vocabulary, an RPC name shape, a bounded integer);
- a name of RPC/dotted-identifier shape without long digit runs (else ``insitu.span``);
- events by (safe) name only, with their attributes filtered the same way, so recorded
  exceptions keep neither message nor stack trace;
- links without attributes, and a status without its description.

So a later ``span.set_attribute("site_id", ...)`` or an exception message that quotes a
request value is dropped here, whoever wrote it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import Link
from opentelemetry.trace.status import Status

__all__ = ["ALLOWED_ATTRIBUTES", "AllowListSpanProcessor", "safe_span_name", "sanitize_span"]

_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,8}$")
_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NAME = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,8}(?:/[A-Za-z_][A-Za-z0-9_]*)?$"
)
FALLBACK_NAME = "insitu.span"


@functools.lru_cache(maxsize=4096)  # names and RPC values repeat on every call
def _id_like(value: str) -> bool:
    # Ids, PANs, dates, serials and hex digests carry digits; RPC and span names have at
    # most a version digit or two per segment ("insitu.v1").
    return any(sum(c.isdigit() for c in seg) > 2 for seg in re.split(r"[./]", value))


def _one_of(*values: str) -> Callable[[Any], bool]:
    allowed = frozenset(values)
    return lambda v: isinstance(v, str) and v in allowed


def _int_between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None and not _id_like(v)


ALLOWED_ATTRIBUTES: Mapping[str, Callable[[Any], bool]] = {
    "rpc.system": _one_of("grpc"),
    "rpc.service": _matches(_SERVICE),
    "rpc.method": _matches(_METHOD),
    "rpc.grpc.status_code": _int_between(0, 16),
    "insitu.outcome": _one_of("ok", "denied", "cancelled", "error"),
    "insitu.principal_kind": _one_of("site", "user", "service", "none"),
    "insitu.phase": _one_of("train", "evaluate", "query", "other"),
    "insitu.round": _int_between(0, 1_000_000),
    "insitu.sites": _int_between(0, 1_000_000),
}


def allowed(key: str, value: Any) -> bool:
    check = ALLOWED_ATTRIBUTES.get(key)
    return check is not None and check(value)


def _filter(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if allowed(k, v)}


@functools.lru_cache(maxsize=4096)
def safe_span_name(name: str) -> str:
    """``name`` if it has RPC or dotted-identifier shape and is not id-like, else a fixed
    fallback."""
    if len(name) <= 128 and _NAME.fullmatch(name) and not _id_like(name):
        return name
    return FALLBACK_NAME


def sanitize_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` that carries only what the allow-list admits."""
    events = [
        Event(safe_span_name(e.name), _filter(e.attributes), e.timestamp) for e in span.events
    ]
    links = [Link(link.context) for link in span.links]
    return ReadableSpan(
        name=safe_span_name(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_filter(span.attributes),
        events=events,
        links=links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class AllowListSpanProcessor(SpanProcessor):
    """Wraps the processor of an exporter so it only ever sees sanitized spans."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        # Export processors (simple, batch) do nothing at start; nothing leaves here.
        return None

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(sanitize_span(span))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))
