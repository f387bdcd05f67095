"""Tracing and metrics layers on a real TLS 1.3 server built by ``build_server``, with
certificates issued by the session's OpenBao, and a client using the tracing interceptor.

Canary values are planted in request fields, in call metadata and in error details; they
must never appear in an exported span, in a metric label or on the /metrics page.
Both placements of the layers are exercised: inside the chain (``extra_layers``) and
outermost, before the error layer (where servers should put them).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from insitu._proto.v1 import admin_pb2, jobs_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService
from insitu.rpc.authn import Authenticator, AuthnLayer
from insitu.rpc.authz import AuthzLayer
from insitu.rpc.chain import Call, Layer, LayerInterceptor
from insitu.rpc.errors import ErrorLayer
from insitu.rpc.server import KEEPALIVE_OPTIONS, build_server, secure_channel, server_credentials
from insitu.telemetry import (
    ALLOWED_ATTRIBUTES,
    InsituMetrics,
    MetricsLayer,
    TracingClientInterceptor,
    TracingLayer,
    add_exporter,
    inject_to_dict,
    start_metrics_server,
)
from insitu.telemetry.metrics import label_vocabularies

SERVER_NAME = "telemetry.test.insitu"
CANARY_FIELD = "canary-field-7f3a9c"
CANARY_MD = "canary-metadata-51be2d"
CANARY_ERR = "canary-error-detail-c0ffee"
CANARIES = (CANARY_FIELD, CANARY_MD, CANARY_ERR, "4111111111111111")

GET_SITE = "/insitu.v1.Admin/GetSite"
WATCH_JOB = "/insitu.v1.Jobs/WatchJob"
REVOKE_SITE = "/insitu.v1.Admin/RevokeSite"
RELOAD = "/insitu.v1.Admin/ReloadPolicy"  # served here as stream-unary
CONNECT = "/insitu.v1.SiteSession/Connect"  # served here as stream-stream


def _issue(keys: KeyService, role: str, sid: SpiffeId, **sans: Any) -> Credentials:
    key = generate_private_key()
    cert = keys.sign_csr(role, build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=900, **sans)
    return Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem())


@dataclass
class Seen(Layer):
    """Innermost layer: what the call looked like to the layers below tracing."""

    trace_ids: list[str] = field(default_factory=list)

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        self.trace_ids.append(call.attributes.get("trace_id", ""))
        return proceed()


# What handlers would put into session messages (inject_to_dict), per method.
HANDLER_CONTEXT: dict[str, dict[str, str]] = {}


def _handlers(server: grpc.Server) -> list[str]:
    def get_site(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        HANDLER_CONTEXT[GET_SITE] = inject_to_dict()
        site = admin_pb2.GetSiteRequest.FromString(req).site_id
        return admin_pb2.Site(site_id=site).SerializeToString()

    def revoke_site(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        raise InsituError(ErrorCode.NOT_FOUND, f"no such site {CANARY_ERR}")

    def watch_job(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for r in range(3):
            HANDLER_CONTEXT[WATCH_JOB] = inject_to_dict()
            yield jobs_pb2.JobEvent(round=jobs_pb2.RoundSummary(round=r)).SerializeToString()

    def reload(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        n = sum(1 for _ in reqs)
        return admin_pb2.ReloadPolicyResponse(new_hash=str(n)).SerializeToString()

    def connect(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        yield from reqs

    handlers = {
        "GetSite": grpc.unary_unary_rpc_method_handler(get_site),
        "RevokeSite": grpc.unary_unary_rpc_method_handler(revoke_site),
        "ReloadPolicy": grpc.stream_unary_rpc_method_handler(reload),
    }
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("insitu.v1.Admin", handlers),
        grpc.method_handlers_generic_handler(
            "insitu.v1.Jobs", {"WatchJob": grpc.unary_stream_rpc_method_handler(watch_job)}),
        grpc.method_handlers_generic_handler(
            "insitu.v1.SiteSession",
            {"Connect": grpc.stream_stream_rpc_method_handler(connect)}),
    ))  # fmt: skip
    return ["insitu.v1.Admin", "insitu.v1.Jobs", "insitu.v1.SiteSession"]


@dataclass
class Rig:
    exporter: InMemorySpanExporter
    metrics: InsituMetrics
    seen: Seen
    user: grpc.Channel
    site: grpc.Channel
    placement: str

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def invoke(self, channel: grpc.Channel, method: str, request: bytes, **kw: Any) -> Any:
        return channel.unary_unary(method)(request, timeout=10, **kw)


@pytest.fixture(scope="module")
def issued(key_service: KeyService, trust_domain: str) -> dict[str, Credentials]:
    return {
        "service": _issue(key_service, "service", SpiffeId.service(trust_domain, "telemetry"),
                          dns_sans=[SERVER_NAME]),
        "user": _issue(key_service, "user", SpiffeId.user(trust_domain, "tina")),
        "site": _issue(key_service, "site", SpiffeId.site(trust_domain, "tel-site")),
    }  # fmt: skip


@pytest.fixture(params=["inner", "outer"])
def rig(
    request: pytest.FixtureRequest, issued: dict[str, Credentials], trust_domain: str
) -> Iterator[Rig]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    add_exporter(provider, exporter)
    metrics = InsituMetrics()
    seen = Seen()
    HANDLER_CONTEXT.clear()
    tracing, counting = TracingLayer(provider), MetricsLayer(metrics)
    creds = server_credentials(issued["service"])
    authn = Authenticator(trust_domain, None)
    if request.param == "inner":
        server, port, _ = build_server(
            address="127.0.0.1:0",
            credentials=creds,
            authenticator=authn,
            authorizer=None,
            register=_handlers,
            extra_layers=[tracing, counting, seen],
        )
    else:
        from concurrent import futures

        chain = [tracing, counting, ErrorLayer(), AuthnLayer(authn), AuthzLayer(None), seen]
        server = grpc.server(
            futures.ThreadPoolExecutor(8),
            interceptors=[LayerInterceptor(chain)],
            options=KEEPALIVE_OPTIONS,
        )
        _handlers(server)
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()  # fmt: skip

    def channel(who: str) -> grpc.Channel:
        raw = secure_channel(
            f"127.0.0.1:{port}",
            ca_pem=issued[who].ca_pem,
            creds=issued[who],
            server_name=SERVER_NAME,
        )
        return grpc.intercept_channel(raw, TracingClientInterceptor(provider))

    user, site = channel("user"), channel("site")
    try:
        yield Rig(exporter, metrics, seen, user, site, request.param)
    finally:
        user.close()
        site.close()
        server.stop(None)
        provider.shutdown()


def _by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def _assert_clean(spans: list[ReadableSpan]) -> None:
    for s in spans:
        text = s.to_json()
        for canary in CANARIES:
            assert canary not in text, f"{canary} leaked into span {s.name}"
        assert set(s.attributes or {}) <= set(ALLOWED_ATTRIBUTES), s.attributes


def _md() -> list[tuple[str, str]]:
    return [("x-canary", CANARY_MD), ("baggage", f"user={CANARY_MD}")]


def test_server_span_is_child_of_client_span_and_trace_id_reaches_the_call(rig: Rig) -> None:
    req = admin_pb2.GetSiteRequest(site_id=CANARY_FIELD).SerializeToString()
    reply = admin_pb2.Site.FromString(rig.invoke(rig.user, GET_SITE, req, metadata=_md()))
    assert reply.site_id == CANARY_FIELD  # the handler did see the real request

    spans = rig.spans()
    [client] = _by_kind(spans, SpanKind.CLIENT)
    [server] = _by_kind(spans, SpanKind.SERVER)
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.name == client.name == "insitu.v1.Admin/GetSite"
    assert rig.seen.trace_ids == [format_trace_id(server.context.trace_id)]
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": "insitu.v1.Admin", "rpc.method": "GetSite",
        "rpc.grpc.status_code": 0, "insitu.outcome": "ok", "insitu.principal_kind": "user",
    }  # fmt: skip
    # Handler code runs inside the server span: what it sends on carries this trace.
    assert HANDLER_CONTEXT[GET_SITE]["traceparent"].split("-")[1:3] == [
        format_trace_id(server.context.trace_id),
        format_span_id(server.context.span_id),
    ]
    _assert_clean(spans)


def test_error_status_is_recorded_without_the_error_text(rig: Rig) -> None:
    req = admin_pb2.RevokeSiteRequest(site_id=CANARY_FIELD, reason="4111111111111111")
    with pytest.raises(grpc.RpcError) as e:
        rig.invoke(rig.user, REVOKE_SITE, req.SerializeToString(), metadata=_md())
    assert e.value.code() is grpc.StatusCode.NOT_FOUND
    spans = rig.spans()
    for s in spans:
        assert (s.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert (s.attributes or {})["insitu.outcome"] == "error"
        assert s.status.description is None
    assert len(_by_kind(spans, SpanKind.SERVER)) == 1
    _assert_clean(spans)


def test_response_stream_span_ends_with_the_stream(rig: Rig) -> None:
    req = jobs_pb2.GetJobRequest(job_id=CANARY_FIELD).SerializeToString()
    stream = rig.user.unary_stream(WATCH_JOB)(req, timeout=10, metadata=_md())
    first = next(stream)
    assert jobs_pb2.JobEvent.FromString(first).round.round == 0
    rest = list(stream)
    assert len(rest) == 2
    rig.exporter.force_flush()
    [server] = _by_kind(rig.spans(), SpanKind.SERVER)
    [client] = _by_kind(rig.spans(), SpanKind.CLIENT)
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.end_time is not None and (server.attributes or {})["insitu.outcome"] == "ok"
    assert rig.seen.trace_ids == [format_trace_id(server.context.trace_id)]
    assert HANDLER_CONTEXT[WATCH_JOB]["traceparent"].split("-")[1:3] == [
        format_trace_id(server.context.trace_id),
        format_span_id(server.context.span_id),
    ]
    _assert_clean(rig.spans())


def test_client_streaming_and_bidi_calls_are_traced(rig: Rig) -> None:
    msgs = [admin_pb2.ReloadPolicyRequest().SerializeToString()] * 3
    reply = rig.user.stream_unary(RELOAD)(iter(msgs), timeout=10, metadata=_md())
    assert admin_pb2.ReloadPolicyResponse.FromString(reply).new_hash == "3"
    echoed = list(rig.site.stream_stream(CONNECT)(iter([CANARY_FIELD.encode()] * 2), timeout=10))
    assert echoed == [CANARY_FIELD.encode()] * 2
    spans = rig.spans()
    servers = {s.name: s for s in _by_kind(spans, SpanKind.SERVER)}
    clients = {s.name: s for s in _by_kind(spans, SpanKind.CLIENT)}
    assert (
        set(servers)
        == set(clients)
        == {"insitu.v1.Admin/ReloadPolicy", "insitu.v1.SiteSession/Connect"}
    )
    for name, s in servers.items():
        assert s.parent is not None and s.parent.span_id == clients[name].context.span_id
    assert (servers["insitu.v1.SiteSession/Connect"].attributes or {})[
        "insitu.principal_kind"
    ] == "site"
    _assert_clean(spans)


def test_metrics_layer_counts_by_method_and_code_and_page_is_clean(rig: Rig) -> None:
    ok = admin_pb2.GetSiteRequest(site_id=CANARY_FIELD).SerializeToString()
    for _ in range(3):
        rig.invoke(rig.user, GET_SITE, ok, metadata=_md())
    with pytest.raises(grpc.RpcError):
        rig.invoke(rig.user, REVOKE_SITE, ok)
    # A method outside the method table is refused; its name must not become a label.
    with pytest.raises(grpc.RpcError):
        rig.invoke(rig.user, f"/insitu.v1.Admin/{CANARY_FIELD.replace('-', '')}", ok)
    value = rig.metrics.registry.get_sample_value
    assert (
        value("insitu_rpc_requests_total", {"method": "insitu.v1.Admin/GetSite", "code": "OK"}) == 3
    )
    assert (
        value(
            "insitu_rpc_requests_total",
            {"method": "insitu.v1.Admin/RevokeSite", "code": "NOT_FOUND"},
        )
        == 1
    )
    assert value("insitu_rpc_latency_seconds_count", {"method": "insitu.v1.Admin/GetSite"}) == 3

    server, port = start_metrics_server("127.0.0.1:0", [rig.metrics.registry])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            page = r.read().decode()
    finally:
        server.close()
    assert 'insitu_rpc_requests_total{code="OK",method="insitu.v1.Admin/GetSite"} 3.0' in page
    for canary in CANARIES:
        assert canary not in page and canary.replace("-", "") not in page
    from prometheus_client.parser import text_string_to_metric_families

    vocab = label_vocabularies()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            for label, v in sample.labels.items():
                if label != "le":
                    assert v in vocab[label], (family.name, label, v)


def test_denied_calls_are_seen_only_by_layers_placed_outermost(rig: Rig) -> None:
    req = admin_pb2.GetSiteRequest(site_id=CANARY_FIELD).SerializeToString()
    with pytest.raises(grpc.RpcError) as e:
        rig.invoke(rig.site, GET_SITE, req, metadata=_md())  # Admin is for users only
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
    servers = _by_kind(rig.spans(), SpanKind.SERVER)
    [client] = _by_kind(rig.spans(), SpanKind.CLIENT)
    assert (client.attributes or {})["insitu.outcome"] == "denied"
    counted = rig.metrics.registry.get_sample_value(
        "insitu_rpc_requests_total",
        {"method": "insitu.v1.Admin/GetSite", "code": "PERMISSION_DENIED"},
    )
    if rig.placement == "inner":
        assert servers == [] and counted is None  # why servers put them outermost
    else:
        [server] = servers
        assert dict(server.attributes or {})["insitu.outcome"] == "denied"
        assert dict(server.attributes or {})["insitu.principal_kind"] == "site"
        assert dict(server.attributes or {})["rpc.grpc.status_code"] == 7
        assert counted == 1
    assert rig.seen.trace_ids == []
    _assert_clean(rig.spans())
