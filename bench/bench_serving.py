"""Issue #7 benchmark: site-local serving, with every baseline measured in the same run.

1. Latency at low load (one caller, one row): p50/p99 of unary Predict through the full
   server chain (TLS 1.3 mTLS, authn, authz gate, servicer, validation, batcher, ORT)
   versus the sum of a raw grpcio mTLS echo of the same request bytes and raw ONNX Runtime
   at batch 1. Target: p50 <= echo p50 + ORT p50 + 0.3 ms.
2. Throughput with 64 concurrent callers (one row each): rows/s with the batcher on,
   versus raw ORT at the mean batch size the batcher formed (the inference ceiling), and
   versus the batcher off. Measured in-process (runtime.predict) and over gRPC.

On the MLP (16-32-4) and a small CNN (1x8x8 -> conv -> pool -> 10). TLS uses a throwaway
local CA made with ``cryptography`` (no Vault needed). The audit layer is not in the chain
here (it has its own benchmark, bench_audit.py).

Run: .venv/bin/python bench/bench_serving.py [--n 2000] [--seconds 3] [--delay-us 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from insitu._proto.v1 import site_pb2, site_pb2_grpc
from insitu.identity.credentials import Credentials, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.authn import Authenticator
from insitu.rpc.server import build_server, secure_channel, server_credentials
from site_node.serving import (
    ArtifactMetadata,
    ModelRepository,
    ServingRuntime,
    SiteApiServicer,
    TensorSpec,
    ed25519_verifier,
    encode_tensors,
)

TD = "bench.insitu"
SERVER_NAME = f"site.{TD}"
CALLERS = 64
CLIENT_PROCS = 4
PREDICT = "/insitu.v1.SiteApi/Predict"
ECHO = "/echo.Echo/Unary"
_ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731


# -- models ------------------------------------------------------------------------------


def export(model: torch.nn.Module, example: torch.Tensor, inp: str, out: str) -> bytes:
    buf = io.BytesIO()  # torch accepts a file object, though its stub says path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example,), buf,  # type: ignore[arg-type]
            input_names=[inp], output_names=[out],
            dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}}, dynamo=False, opset_version=17,
        )  # fmt: skip
    return buf.getvalue()


def models() -> dict[str, tuple[bytes, TensorSpec, TensorSpec]]:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 10),
    )  # fmt: skip
    return {
        "mlp": (
            export(mlp, torch.randn(2, 16), "x", "y"),
            TensorSpec("x", "float32", (-1, 16)),
            TensorSpec("y", "float32", (-1, 4)),
        ),
        "cnn": (
            export(cnn, torch.randn(2, 1, 28, 28), "x", "y"),
            TensorSpec("x", "float32", (-1, 1, 28, 28)),
            TensorSpec("y", "float32", (-1, 10)),
        ),
    }


def config(spec: TensorSpec, *, enabled: bool, delay_us: int) -> str:
    return (
        f"inputs: [{{name: {spec.name}, dtype: float32, shape: {list(spec.shape)}}}]\n"
        f"outputs: [y]\n"
        f"batching: {{enabled: {str(enabled).lower()}, max_batch_size: 64,"
        f" max_queue_delay_us: {delay_us}, max_queue_size: 4096}}\n"
    )


# -- TLS ---------------------------------------------------------------------------------


class LocalCa:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
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
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return Credentials(key_to_pem(key), pem, "", self.pem)


def raw_echo_server(creds: Credentials) -> tuple[grpc.Server, int]:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return req

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[handler])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    server.start()
    return server, port


# -- measuring ---------------------------------------------------------------------------


def timed(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()  # warm up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3


def concurrent_rows(fn: Callable[[int], int], seconds: float, callers: int = CALLERS) -> float:
    """Rows/s when ``callers`` threads call ``fn(i)`` (returns rows) in a loop."""
    stop = threading.Event()
    counts = [0] * callers
    barrier = threading.Barrier(callers + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            counts[i] += fn(i)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    total = sum(counts)
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    return total / elapsed


def _client_proc(
    target: str, method: str, ca_pem: str, creds: Credentials, payload: bytes, threads: int,
    start: Any, stop: Any, out: Any,
) -> None:  # fmt: skip
    """One load-generating process: ``threads`` one-row callers on one channel."""
    ch = secure_channel(target, ca_pem=ca_pem, creds=creds, server_name=SERVER_NAME)
    call = ch.unary_unary(method, _ident, _ident)
    call(payload, timeout=30)  # connect before the clock starts
    out.put("ready")
    counts = [0] * threads

    def worker(i: int) -> None:
        start.wait()
        while not stop.is_set():
            call(payload, timeout=30)
            counts[i] += 1

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    stop.wait()
    for t in ts:
        t.join(30)
    out.put(sum(counts))
    ch.close()


def grpc_rows(
    target: str, method: str, ca_pem: str, creds: Credentials, payload: bytes, seconds: float
) -> float:
    """Rows/s from CALLERS callers spread over client *processes*: clients in the server's
    process would share its GIL and measure Python contention instead of the server."""
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_proc,
            args=(
                target,
                method,
                ca_pem,
                creds,
                payload,
                CALLERS // CLIENT_PROCS,
                start,
                stop,
                out,
            ),
        )
        for _ in range(CLIENT_PROCS)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # spawned interpreters import and connect first
        assert out.get(timeout=300) == "ready"
    start.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - t0
    total: int = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    return total / elapsed


def mean_batch(rt: ServingRuntime, model: str) -> float:
    reg = rt.metrics.registry
    labels = {"model": model, "version": "1"}
    s = reg.get_sample_value("insitu_serving_batch_size_sum", labels) or 0.0
    c = reg.get_sample_value("insitu_serving_batch_size_count", labels) or 1.0
    return float(s / c)


# -- main --------------------------------------------------------------------------------


@dataclass
class Env:
    args: argparse.Namespace
    signing_key: Ed25519PrivateKey
    ca: LocalCa
    server_creds: Credentials
    client_creds: Credentials
    echo_port: int


def serve(
    env: Env, name: str, onnx: bytes, in_spec: TensorSpec, out_spec: TensorSpec, batching: bool
) -> tuple[ServingRuntime, grpc.Server, int]:
    """A runtime with ``name`` v1 deployed, behind a full-chain TLS server."""
    verify = ed25519_verifier(
        env.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    tmp = Path(tempfile.mkdtemp(prefix="insitu-bench-serving-"))
    rt = ServingRuntime(ModelRepository(tmp / "models"))
    meta = ArtifactMetadata.unsigned(name, 1, onnx, [in_spec], [out_spec], key_version=1)
    meta = meta.with_signature(env.signing_key.sign(meta.signing_message()))
    cfg = config(in_spec, enabled=batching, delay_us=env.args.delay_us)
    rt.deploy(name, 1, onnx, meta, verify, config_yaml=cfg)

    def register(server: grpc.Server) -> list[str]:
        site_pb2_grpc.add_SiteApiServicer_to_server(SiteApiServicer(rt), server)
        return ["insitu.v1.SiteApi"]

    server, port, _ = build_server(
        address="127.0.0.1:0",
        credentials=server_credentials(env.server_creds),
        authenticator=Authenticator(TD, None),
        authorizer=None,
        register=register,
        max_workers=CALLERS + 8,
    )
    server.start()
    return rt, server, port


def _predict_rows(
    rt: ServingRuntime, name: str, feeds: dict[str, np.ndarray], caller: str, _i: int
) -> int:
    return rt.predict(name, "", feeds, caller, timeout=30).rows


def line(label: str, lat: list[float]) -> None:
    print(f"{label:<26s} p50 {pct(lat, 50):7.3f} ms  p99 {pct(lat, 99):7.3f} ms")


def bench_model(
    env: Env, name: str, onnx: bytes, in_spec: TensorSpec, out_spec: TensorSpec
) -> None:
    print(f"\n== {name} ==")
    n, seconds = env.args.n, env.args.seconds
    one = np.random.default_rng(0).standard_normal((1, *in_spec.shape[1:])).astype(np.float32)
    feeds = {in_spec.name: one}
    req = site_pb2.PredictRequest(model=name, inputs=encode_tensors(feeds))
    payload = req.SerializeToString()
    caller = SpiffeId.user(TD, "bench-app").uri
    results: dict[str, float] = {}
    latency: dict[str, list[float]] = {}
    formed = 1.0
    provider = "CPUExecutionProvider"
    for batching in (True, False):
        mode = "on" if batching else "off"
        rt, server, port = serve(env, name, onnx, in_spec, out_spec, batching)
        provider = rt.status(name).provider
        ch = secure_channel(
            f"127.0.0.1:{port}", ca_pem=env.ca.pem, creds=env.client_creds,
            server_name=SERVER_NAME,
        )  # fmt: skip
        stub = site_pb2_grpc.SiteApiStub(ch)
        if batching:  # the baselines, measured right before ours
            ech = secure_channel(
                f"127.0.0.1:{env.echo_port}", ca_pem=env.ca.pem, creds=env.client_creds,
                server_name=SERVER_NAME,
            )  # fmt: skip
            echo_call = ech.unary_unary(ECHO, _ident, _ident)
            raw_sess = ort.InferenceSession(onnx, providers=[provider])
            latency["echo"] = timed(partial(echo_call, payload, timeout=10), n)
            latency["ort"] = timed(partial(raw_sess.run, None, feeds), n)
            ech.close()
        latency[mode] = timed(partial(stub.Predict, req, timeout=10), n)
        results[f"inproc {mode}"] = concurrent_rows(
            partial(_predict_rows, rt, name, feeds, caller), seconds
        )
        if batching:
            formed = mean_batch(rt, name)
        results[f"grpc {mode}"] = grpc_rows(
            f"127.0.0.1:{port}", PREDICT, env.ca.pem, env.client_creds, payload, seconds
        )
        if batching:
            results["echo"] = grpc_rows(
                f"127.0.0.1:{env.echo_port}", ECHO, env.ca.pem, env.client_creds, payload, seconds
            )
        ch.close()
        server.stop(None)
        rt.close()

    print(f"provider {provider}; max_batch_size 64, max_queue_delay_us {env.args.delay_us}")
    line("raw grpcio mTLS echo", latency["echo"])
    line("raw ORT batch-1", latency["ort"])
    line("Predict, batcher on", latency["on"])
    line("Predict, batcher off", latency["off"])
    base = pct(latency["echo"], 50) + pct(latency["ort"], 50)
    over = pct(latency["on"], 50) - base
    verdict = "meets" if over <= 0.3 else "misses"
    print(
        f"  Predict p50 - (echo p50 + ORT p50) = {over:+.3f} ms ({verdict} the +0.300 ms target);"
        f" ratio {pct(latency['on'], 50) / base:.2f}x"
    )

    b = max(1, round(formed))
    raw = ort.InferenceSession(onnx, providers=[provider])
    batch = {in_spec.name: np.repeat(one, b, axis=0)}
    ceiling = b / statistics.median(timed(lambda: raw.run(None, batch), max(200, n // 4)))
    print(f"{CALLERS} one-row callers; mean batch formed in-process: {formed:.1f} rows")
    print(f"{'raw ORT at batch ' + str(b):<30s} {ceiling:12,.0f} rows/s  (inference ceiling)")
    for key in ("inproc on", "inproc off"):
        v = results[key]
        print(f"{key.replace('inproc', 'in-process, batcher'):<30s} {v:12,.0f} rows/s"
              f"  {v / ceiling:6.3f}x raw ORT")  # fmt: skip
    echo_rate = results["echo"]
    print(f"{'gRPC raw mTLS echo':<30s} {echo_rate:12,.0f} rows/s  (transport ceiling)")
    for key in ("grpc on", "grpc off"):
        v = results[key]
        print(f"{key.replace('grpc', 'gRPC Predict, batcher'):<30s} {v:12,.0f} rows/s"
              f"  {v / ceiling:6.3f}x raw ORT  {v / echo_rate:5.2f}x echo")  # fmt: skip
    for where in ("inproc", "grpc"):
        on, off = results[f"{where} on"], results[f"{where} off"]
        print(f"{where}: batcher on / off = {on / max(off, 1e-9):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="sequential calls per latency sample")
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    ap.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_us")
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, available providers {ort.get_available_providers()}")
    ca = LocalCa()
    server_creds = ca.issue(SpiffeId.service(TD, "site"), dns=SERVER_NAME)
    echo, echo_port = raw_echo_server(server_creds)
    env = Env(
        args, Ed25519PrivateKey.generate(), ca, server_creds,
        ca.issue(SpiffeId.user(TD, "bench-app")), echo_port,
    )  # fmt: skip
    try:
        for name, (onnx, in_spec, out_spec) in models().items():
            bench_model(env, name, onnx, in_spec, out_spec)
    finally:
        echo.stop(None)


if __name__ == "__main__":
    main()
