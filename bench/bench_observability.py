"""Issue #8 benchmark: RPC throughput with tracing + metrics on, versus off, in one run.

Listeners with the insitu layer chain, real TLS 1.3 with certificates from a DevVault
PKI, authn on every call and the transport authz rule:

    off         ``build_server`` as is
    on          TracingLayer + MetricsLayer outermost (where servers put them), spans made
                and sampled with exporter "none" (trace ids for audit, nothing exported);
                the client calls through TracingClientInterceptor (traceparent injected)
    on+export   as "on", plus the ``file:`` exporter (batched JSON lines) writing to
                /dev/null: the exporter's share

Clients run in a separate (spawned) process so client work does not share the server's
GIL; each run makes a fixed number of unary Health.Check calls from a few threads over one
mTLS channel. Variants are interleaved and repeated; the median calls/s per variant and
the ratio on/off (target >= 0.9x) are printed.

Run: .venv/bin/python bench/bench_observability.py [--calls 3000] [--threads 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import hvac
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import DevVault, KeyService, bootstrap_federation
from insitu.rpc.authn import Authenticator, AuthnLayer
from insitu.rpc.authz import AuthzLayer
from insitu.rpc.chain import Layer, LayerInterceptor
from insitu.rpc.errors import ErrorLayer
from insitu.rpc.server import KEEPALIVE_OPTIONS, build_server, secure_channel, server_credentials
from insitu.telemetry import (
    InsituMetrics,
    MetricsLayer,
    TracingClientInterceptor,
    TracingLayer,
    add_exporter,
    setup_tracing,
)
from insitu.telemetry.tracing import exporter_from_spec

TD = "bench.insitu"
SERVER_NAME = f"observability.{TD}"
METHOD = "/grpc.health.v1.Health/Check"
TARGET = 0.9


# -- client process -----------------------------------------------------------------------


def _client_main(conn: Connection, creds_dir: str) -> None:
    """Serves (port, traced, calls, threads) commands; answers elapsed seconds."""
    setup_tracing("insitu-bench-client", "none")
    creds = Credentials.load(Path(creds_dir))
    request = health_pb2.HealthCheckRequest().SerializeToString()
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        port, traced, calls, threads = cmd
        channel = secure_channel(
            f"127.0.0.1:{port}", ca_pem=creds.ca_pem, creds=creds, server_name=SERVER_NAME
        )
        if traced:
            channel = grpc.intercept_channel(channel, TracingClientInterceptor())
        stub = channel.unary_unary(METHOD)
        for _ in range(50):  # warm up: handshake, thread pools
            stub(request, timeout=10)

        def work(n: int) -> None:
            for _ in range(n):
                stub(request, timeout=10)  # noqa: B023  (joined before the stub changes)

        pool = [threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)]
        start, cpu = time.perf_counter(), time.process_time()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        conn.send((time.perf_counter() - start, time.process_time() - cpu))
        channel.close()


# -- server side --------------------------------------------------------------------------


def _issue(keys: KeyService, role: str, sid: SpiffeId, d: Path, **sans: list[str]) -> Credentials:
    key = generate_private_key()
    cert = keys.sign_csr(role, build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=3600, **sans)
    creds = Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem())
    creds.save(d)
    return creds


def _serve(creds: Credentials, outer: list[Layer]) -> tuple[grpc.Server, int]:
    if not outer:
        server, port, _ = build_server(
            address="127.0.0.1:0",
            credentials=server_credentials(creds),
            authenticator=Authenticator(TD, None),
            authorizer=None,
            register=lambda s: [],
        )
        server.start()
        return server, port
    # build_server appends extra layers innermost; servers put these outermost, so the
    # same chain is assembled here with them in front.
    chain = [*outer, ErrorLayer(), AuthnLayer(Authenticator(TD, None)), AuthzLayer(None)]
    server = grpc.server(
        futures.ThreadPoolExecutor(64, thread_name_prefix="rpc"),
        interceptors=[LayerInterceptor(chain)], options=KEEPALIVE_OPTIONS,
        maximum_concurrent_rpcs=256)  # fmt: skip
    health_pb2_grpc.add_HealthServicer_to_server(
        health.HealthServicer(experimental_non_blocking=True), server
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    server.start()
    return server, port


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="tracing + metrics on vs off")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--decompose",
        action="store_true",
        help="also run server-layers-only and client-interceptor-only variants",
    )
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    vault = DevVault()
    vault.start()
    servers: list[grpc.Server] = []
    try:
        bootstrap_federation(hvac.Client(url=vault.address, token=vault.root_token), TD)
        keys = KeyService.from_token(vault.address, vault.root_token)
        creds = _issue(keys, "service", SpiffeId.service(TD, "bench"), tmp / "server",
                       dns_sans=[SERVER_NAME])  # fmt: skip
        _issue(keys, "user", SpiffeId.user(TD, "bench"), tmp / "client")

        provider = setup_tracing("insitu-bench", "none")
        exporting = TracerProvider(resource=provider.resource)
        file_exporter, batch = exporter_from_spec(f"file:{os.devnull}", "insitu-bench")
        add_exporter(exporting, file_exporter, batch=batch)
        variants: dict[str, tuple[int, bool]] = {}
        plan: list[tuple[str, list[Layer], bool]] = [
            ("off", [], False),
            ("on", [TracingLayer(), MetricsLayer(InsituMetrics())], True),
            ("on+export", [TracingLayer(exporting), MetricsLayer(InsituMetrics())], True),
        ]
        if args.decompose:
            plan += [
                ("server", [TracingLayer(), MetricsLayer(InsituMetrics())], False),
                ("tracing", [TracingLayer()], False),
                ("metrics", [MetricsLayer(InsituMetrics())], False),
                ("client", [], True),
            ]
        for name, outer, traced in plan:
            server, port = _serve(creds, outer)
            servers.append(server)
            variants[name] = (port, traced)

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client_main, args=(child, str(tmp / "client")))
        proc.start()
        rates: dict[str, list[float]] = {k: [] for k in variants}
        cpu_us: dict[str, list[float]] = {k: [] for k in variants}  # server + client per call
        done = args.calls // args.threads * args.threads
        try:
            for _ in range(args.repeats):
                for name, (port, traced) in variants.items():
                    server_cpu = time.process_time()  # this process runs only the servers
                    parent.send((port, traced, args.calls, args.threads))
                    elapsed, client_cpu = parent.recv()
                    server_cpu = time.process_time() - server_cpu
                    rates[name].append(done / elapsed)
                    cpu_us[name].append((server_cpu + client_cpu) / done * 1e6)
        finally:
            parent.send(None)
            proc.join(30)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"unary {METHOD}: {done} calls x {args.repeats} repeats, {args.threads} client "
              "threads in a separate process, TLS 1.3 + authn")  # fmt: skip
        cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
        for name, runs in rates.items():
            print(f"  {name:10s} median {med[name]:8.0f} calls/s  "
                  f"{cpu[name]:6.0f} CPU-us/call (server+client)   runs: "
                  + ", ".join(f"{x:.0f}" for x in runs))  # fmt: skip
        ratio = med["on"] / med["off"]
        verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
        print(f"throughput ratio on/off        = {ratio:.3f}x (target >= {TARGET}x) {verdict}")
        print(f"throughput ratio on+export/off = {med['on+export'] / med['off']:.3f}x")
        print(
            f"CPU-per-call ratio off/on = {cpu['off'] / cpu['on']:.3f}x, "
            f"off/on+export = {cpu['off'] / cpu['on+export']:.3f}x "
            "(the throughput the layers allow when CPU-bound; less noisy on a shared host)"
        )
        exporting.shutdown()
    finally:
        for server in servers:
            server.stop(None)
        vault.stop()


if __name__ == "__main__":
    main()
