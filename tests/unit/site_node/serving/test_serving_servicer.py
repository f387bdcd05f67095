"""SiteApi Predict and PredictStream through a real TLS 1.3 gRPC server built by
insitu.rpc.server.build_server (the full layer chain), with a throwaway local CA."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serving_support import Models, reference, rows

from insitu._proto.v1 import site_pb2, site_pb2_grpc
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import Credentials, key_to_pem
from insitu.identity.principal import Principal
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.authn import Authenticator
from insitu.rpc.chain import Call, Layer
from insitu.rpc.server import build_server, secure_channel, server_credentials
from site_node.serving import ServingRuntime, SiteApiServicer, decode_tensors, encode_tensors

TD = "test.insitu"
SERVER_NAME = f"site.{TD}"


class _Ca:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test serving CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, sid: SpiffeId, dns: str | None = None) -> Credentials:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(sid.uri)]
        if dns:
            sans.append(x509.DNSName(dns))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sid.name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Credentials(
            key_to_pem(key), cert.public_bytes(serialization.Encoding.PEM).decode(), "", self.pem
        )


class RecordingAudit(Layer):
    """Stands where the audit layer stands and keeps each call's metadata notes."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        if call.response_streaming:
            return self._stream(call, proceed)
        try:
            return proceed()
        finally:
            self._keep(call)

    def _stream(self, call: Call, proceed: Callable[[], Any]) -> Iterator[Any]:
        try:
            yield from proceed()
        finally:
            self._keep(call)

    def _keep(self, call: Call) -> None:
        with self.lock:
            self.records.append({"method": call.method, **call.attributes.get("notes", {})})


@dataclass
class Site:
    target: str
    ca: _Ca
    audit: RecordingAudit
    denied_models: set[str]

    def channel(self, sid: SpiffeId) -> grpc.Channel:
        return secure_channel(
            self.target, ca_pem=self.ca.pem, creds=self.ca.issue(sid), server_name=SERVER_NAME
        )


APP = SpiffeId.user(TD, "clinic-app")


@pytest.fixture
def site(runtime: ServingRuntime) -> Iterator[Site]:
    ca = _Ca()
    server_creds = ca.issue(SpiffeId.service(TD, "site-hospital-a"), dns=SERVER_NAME)
    audit = RecordingAudit()
    denied: set[str] = set()

    def guard(principal: Principal, model: str) -> None:
        if model in denied:
            raise InsituError(ErrorCode.PERMISSION_DENIED, f"predict on {model}")

    def register(server: grpc.Server) -> list[str]:
        site_pb2_grpc.add_SiteApiServicer_to_server(
            SiteApiServicer(runtime, model_guard=guard), server
        )
        return ["insitu.v1.SiteApi"]

    server, port, _ = build_server(
        address="127.0.0.1:0",
        credentials=server_credentials(server_creds),
        authenticator=Authenticator(TD, None),
        authorizer=None,
        register=register,
        extra_layers=[audit],
        max_workers=16,
    )
    server.start()
    try:
        yield Site(f"127.0.0.1:{port}", ca, audit, denied)
    finally:
        server.stop(None)


def _request(
    x: np.ndarray, model: str = "mlp", rid: str = "r1", version: str = ""
) -> site_pb2.PredictRequest:
    return site_pb2.PredictRequest(
        model=model, version=version, inputs=encode_tensors({"x": x}), request_id=rid
    )


def test_unary_predict_matches_onnxruntime_and_audits_metadata_only(
    site: Site, models: Models
) -> None:
    x = rows(7, seed=5)
    x[0, 0] = 731942.5  # a recognisable value: it must not reach the audit notes
    with site.channel(APP) as ch:
        resp = site_pb2_grpc.SiteApiStub(ch).Predict(_request(x, rid="req-1"), timeout=20)
    assert (resp.model, resp.version, resp.request_id) == ("mlp", "1", "req-1")
    y = decode_tensors(resp.outputs)["y"]
    np.testing.assert_allclose(y, reference(models.mlp[1], {"x": x})["y"], atol=1e-5, rtol=0)
    (rec,) = [r for r in site.audit.records if r["method"].endswith("/Predict")]
    assert rec["model"] == "mlp" and rec["version"] == "1" and rec["rows"] == "7"
    assert float(rec["latency_ms"]) >= 0
    assert "731942" not in repr(rec)


@pytest.mark.parametrize(
    ("request_", "status", "text"),
    [
        (
            lambda: _request(np.full((2, 16), np.nan, np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs['x']: row 0",
        ),
        (
            lambda: _request(rows(2, 0)[:, :8]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs['x'].shape",
        ),
        (
            lambda: site_pb2.PredictRequest(
                model="mlp",
                inputs=[site_pb2.Tensor(name="x", dtype="float32", shape=[2, 16], data=b"\0" * 12)],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[0].data",
        ),
        (
            lambda: _request(rows(2, 0), model="unknown"),
            grpc.StatusCode.NOT_FOUND,
            "model 'unknown'",
        ),
        (lambda: _request(rows(2, 0), version="7"), grpc.StatusCode.NOT_FOUND, "version 7"),
    ],
)
def test_bad_requests_get_precise_statuses_and_serving_goes_on(
    site: Site,
    models: Models,
    request_: Callable[[], site_pb2.PredictRequest],
    status: grpc.StatusCode,
    text: str,
) -> None:
    with site.channel(APP) as ch:
        stub = site_pb2_grpc.SiteApiStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request_(), timeout=20)
        assert e.value.code() == status
        assert text in e.value.details()
        x = rows(3, seed=1)
        y = decode_tensors(stub.Predict(_request(x), timeout=20).outputs)["y"]
        np.testing.assert_allclose(y, reference(models.mlp[1], {"x": x})["y"], atol=1e-5, rtol=0)


def test_a_site_identity_cannot_predict(site: Site) -> None:
    with site.channel(SpiffeId.site(TD, "hospital-b")) as ch, pytest.raises(grpc.RpcError) as e:
        site_pb2_grpc.SiteApiStub(ch).Predict(_request(rows(1, 0)), timeout=20)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stream_returns_responses_in_order(site: Site, models: Models) -> None:
    xs = [rows(1 + i % 5, seed=i) for i in range(40)]
    reqs = [_request(x, rid=f"s{i}") for i, x in enumerate(xs)]
    with site.channel(APP) as ch:
        resps = list(site_pb2_grpc.SiteApiStub(ch).PredictStream(iter(reqs), timeout=30))
    assert [r.request_id for r in resps] == [f"s{i}" for i in range(40)]
    want = reference(models.mlp[1], {"x": np.concatenate(xs)})["y"]
    got = np.concatenate([decode_tensors(r.outputs)["y"] for r in resps])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    (rec,) = [r for r in site.audit.records if r["method"].endswith("/PredictStream")]
    assert rec["messages"] == "40" and rec["rows"] == str(sum(len(x) for x in xs))
    assert rec["model"] == "mlp" and rec["version"] == "mlp:1"


def test_stream_is_interactive(site: Site) -> None:
    """A caller that waits for each answer before sending the next is served."""
    import queue

    outbox: queue.Queue[site_pb2.PredictRequest | None] = queue.Queue()

    def requests() -> Iterator[site_pb2.PredictRequest]:
        while (item := outbox.get()) is not None:
            yield item

    with site.channel(APP) as ch:
        responses = site_pb2_grpc.SiteApiStub(ch).PredictStream(requests(), timeout=30)
        for i in range(5):
            outbox.put(_request(rows(2, seed=i), rid=f"i{i}"))
            assert next(responses).request_id == f"i{i}"
        outbox.put(None)
        assert list(responses) == []


def test_stream_ends_with_the_first_bad_request_status(site: Site) -> None:
    reqs = [_request(rows(2, 1), rid="ok0"), _request(rows(2, 2), rid="ok1"),
            _request(np.full((1, 16), np.inf, np.float32), rid="bad"), _request(rows(2, 3), rid="never")]  # fmt: skip
    got: list[str] = []
    with site.channel(APP) as ch, pytest.raises(grpc.RpcError) as e:
        for r in site_pb2_grpc.SiteApiStub(ch).PredictStream(iter(reqs), timeout=30):
            got.append(r.request_id)
    assert got == ["ok0", "ok1"]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs['x']: row 0" in e.value.details()


def test_stream_asks_the_model_guard_per_model(site: Site) -> None:
    site.denied_models.add("cnn")
    reqs = [
        _request(rows(1, 1)),
        site_pb2.PredictRequest(
            model="cnn", inputs=encode_tensors({"image": rows(1, 1, (1, 8, 8))})
        ),
    ]
    with site.channel(APP) as ch, pytest.raises(grpc.RpcError) as e:
        list(site_pb2_grpc.SiteApiStub(ch).PredictStream(iter(reqs), timeout=30))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
