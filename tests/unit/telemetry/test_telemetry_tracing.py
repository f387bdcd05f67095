"""The span allow-list, trace-context propagation helpers and exporter setup."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode, format_trace_id

from insitu.errors import InsituError
from insitu.telemetry import (
    ALLOWED_ATTRIBUTES,
    add_exporter,
    current_trace_id,
    extract_from_dict,
    inject_to_dict,
    trace_metadata,
    tracer,
)
from insitu.telemetry.allowlist import FALLBACK_NAME, safe_span_name
from insitu.telemetry.tracing import exporter_from_spec

CANARY = "canary-9d2f41"
PAN = "4111111111111111"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    p = TracerProvider()
    exporter = InMemorySpanExporter()
    add_exporter(p, exporter)
    yield p, exporter
    p.shutdown()


def _only(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


def test_attributes_outside_the_allow_list_never_leave(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    p, exporter = provider
    with tracer(p).start_as_current_span("insitu.round") as span:
        span.set_attribute("site_id", CANARY)
        span.set_attribute("insitu.request", CANARY)
        span.set_attribute("http.url", f"https://x/{CANARY}")
        span.set_attribute("rpc.method", "GetSite")
        span.set_attribute("insitu.round", 3)
        span.set_attribute("insitu.phase", "train")
    exported = _only(exporter)
    assert dict(exported.attributes or {}) == {
        "rpc.method": "GetSite",
        "insitu.round": 3,
        "insitu.phase": "train",
    }
    assert CANARY not in exported.to_json()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rpc.method", CANARY),  # has a digit run
        ("rpc.method", "Get Site"),
        ("rpc.service", f"svc.{PAN}"),
        ("rpc.grpc.status_code", 99),
        ("rpc.grpc.status_code", True),
        ("insitu.outcome", CANARY),
        ("insitu.principal_kind", "spiffe://td/user/eve"),
        ("insitu.phase", PAN),
        ("insitu.round", PAN),
        ("rpc.system", "http"),
    ],
)
def test_allowed_keys_with_values_out_of_shape_are_dropped(
    provider: tuple[TracerProvider, InMemorySpanExporter], key: str, value: object
) -> None:
    p, exporter = provider
    with tracer(p).start_as_current_span("insitu.x") as span:
        span.set_attribute(key, value)  # type: ignore[arg-type]
    assert key in ALLOWED_ATTRIBUTES
    assert key not in (_only(exporter).attributes or {})


def test_exceptions_status_text_events_and_links_are_stripped(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    p, exporter = provider
    with tracer(p).start_as_current_span("linked") as other:
        pass
    t = tracer(p)
    with (
        pytest.raises(ValueError),
        t.start_as_current_span(
            "insitu.job", links=[Link(other.get_span_context(), {"site": CANARY})]
        ) as span,
    ):
        span.add_event(f"site {CANARY} joined", {"site": CANARY, "insitu.sites": 2})
        span.set_status(Status(StatusCode.ERROR, f"failed for {PAN}"))
        raise ValueError(f"bad row {PAN} {CANARY}")
    exported = next(s for s in exporter.get_finished_spans() if s.name == "insitu.job")
    text = exported.to_json()
    assert CANARY not in text and PAN not in text
    assert exported.status.status_code is StatusCode.ERROR
    assert exported.status.description is None
    names = [e.name for e in exported.events]
    assert names == [FALLBACK_NAME, "exception"]
    assert dict(exported.events[0].attributes or {}) == {"insitu.sites": 2}
    assert dict(exported.events[1].attributes or {}) == {}
    assert [dict(link.attributes or {}) for link in exported.links] == [{}]


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("insitu.v1.Admin/GetSite", True),
        ("insitu.round.train", True),
        (f"site {CANARY}", False),
        ("job.4f3a9c21", False),
        ("insitu.round.a7f3e9c1", False),
        ("insitu.v1.Jobs/WatchJob", True),
        ("insitu.v1.Admin/GetSite/extra", False),
        ("eve@example.com", False),
        ("x" * 200, False),
    ],
)
def test_span_names_of_unsafe_shape_are_replaced(name: str, safe: bool) -> None:
    assert (safe_span_name(name) == name) is safe
    if not safe:
        assert safe_span_name(name) == FALLBACK_NAME


def test_inject_extract_round_trip_makes_a_child_in_the_same_trace(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    p, exporter = provider
    t = tracer(p)
    with t.start_as_current_span("insitu.round") as parent:
        carrier = inject_to_dict()
        assert trace_metadata() == list(carrier.items())
        assert current_trace_id() == format_trace_id(parent.get_span_context().trace_id)
    assert set(carrier) == {"traceparent"}
    # On the other side of the session stream, on another thread of another process:
    with t.start_as_current_span("insitu.site.train", context=extract_from_dict(carrier)):
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    child, root = spans["insitu.site.train"], spans["insitu.round"]
    assert child.context.trace_id == root.context.trace_id
    assert child.parent is not None and child.parent.span_id == root.context.span_id


def test_nothing_to_inject_outside_a_span() -> None:
    assert inject_to_dict() == {}
    assert current_trace_id() is None


def test_baggage_and_unknown_keys_are_never_propagated(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    p, _ = provider
    token = otel_context.attach(baggage.set_baggage("user", CANARY))
    try:
        with tracer(p).start_as_current_span("insitu.x"):
            carrier = inject_to_dict()
    finally:
        otel_context.detach(token)
    assert CANARY not in json.dumps(carrier)
    ctx = extract_from_dict({**carrier, "baggage": f"user={CANARY}"})
    assert baggage.get_all(ctx) == {}


@pytest.mark.parametrize(
    "carrier",
    [
        {},
        {"traceparent": "garbage"},
        {"traceparent": "00-00000000000000000000000000000000-0000000000000000-01"},
        {"x-traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    ],
)
def test_malformed_carriers_start_a_new_trace(
    provider: tuple[TracerProvider, InMemorySpanExporter], carrier: dict[str, str]
) -> None:
    p, exporter = provider
    with tracer(p).start_as_current_span("insitu.x", context=extract_from_dict(carrier)):
        pass
    span = _only(exporter)
    assert span.parent is None
    assert format_trace_id(span.context.trace_id) != "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("spec", ["", "bogus", "file:", "otlp:", "jaeger:x"])
def test_unknown_exporter_specs_are_refused(spec: str) -> None:
    with pytest.raises(InsituError):
        exporter_from_spec(spec, "insitu-test")


def test_process_setup_none_then_file_exporter(tmp_path: Path) -> None:
    # A fresh process: setup_tracing installs the process-global provider.
    out = tmp_path / "traces.jsonl"
    code = textwrap.dedent(f"""
        from opentelemetry.trace import format_trace_id
        from insitu.telemetry import (current_trace_id, extract_from_dict, inject_to_dict,
                                      setup_tracing, tracer)
        p = setup_tracing("insitu-test")          # exporter "none"
        with tracer().start_as_current_span("insitu.round") as s:
            assert not s.is_recording()           # cheap: nothing is exported
            carrier = inject_to_dict()
            tid = current_trace_id()
        assert tid and carrier["traceparent"].split("-")[1] == tid
        assert int(carrier["traceparent"][-2:], 16) & 1 == 0   # not sampled here
        with tracer().start_as_current_span("x", context=extract_from_dict(carrier)) as c:
            assert format_trace_id(c.get_span_context().trace_id) == tid

        assert setup_tracing("insitu-test", "file:{out}") is p
        assert setup_tracing("insitu-test", "file:{out}") is p   # idempotent
        # Now recorded, even as the child of a caller that did not sample.
        with tracer().start_as_current_span("insitu.round.train",
                                            context=extract_from_dict(carrier)) as s:
            assert s.is_recording()
            s.set_attribute("site_id", "{CANARY}")
            s.set_attribute("insitu.round", 0)
        with tracer().start_as_current_span("insitu.round") as s:
            s.set_attribute("insitu.round", 1)
        p.shutdown()
        print(tid)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True
    )
    tid = done.stdout.strip()
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    spans = [json.loads(line) for line in lines]
    assert [s["attributes"] for s in spans] == [{"insitu.round": 0}, {"insitu.round": 1}]
    assert {s["service"] for s in spans} == {"insitu-test"}
    assert spans[0]["trace_id"] == tid and spans[0]["parent_id"] is not None
    assert spans[1]["trace_id"] != tid and spans[1]["parent_id"] is None
    assert CANARY not in out.read_text()
    assert out.stat().st_mode & 0o077 == 0


def test_sanitized_spans_encode_for_otlp(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    p, exporter = provider
    with tracer(p).start_as_current_span("insitu.round") as span:
        span.set_attribute("insitu.round", 2)
        span.set_attribute("site_id", CANARY)
        span.add_event("insitu.site.done", {"insitu.sites": 1, "who": CANARY})
    wire = encode_spans(exporter.get_finished_spans()).SerializeToString()
    assert b"insitu.round" in wire and CANARY.encode() not in wire
    otlp, batch = exporter_from_spec("otlp:127.0.0.1:4317", "insitu-test")
    assert batch
    otlp.shutdown()
