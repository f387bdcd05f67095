"""Issue #2 benchmark: mTLS handshake + first RPC, and the session heartbeat round trip,
for insitu versus a raw grpcio mTLS echo server measured in the same run with the same
Vault-issued certificates. Prints ratios (insitu time / raw time; lower is better).

Run: .venv/bin/python bench/bench_transport.py [--n 200]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import hvac

from coordinator.server import Coordinator
from coordinator.settings import CoordinatorSettings
from insitu._proto.v1 import session_pb2, session_pb2_grpc
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import DevVault, KeyService, bootstrap_federation
from insitu.rpc.server import secure_channel, server_credentials
from insitu.sdk import Client
from site_node.enrol import enrol

TD = "bench.insitu"
_ident = lambda b: b  # noqa: E731


def raw_echo_server(creds: Credentials) -> tuple[grpc.Server, int]:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return req

    def bidi(it, ctx):  # type: ignore[no-untyped-def]
        yield from it

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _ident, _ident),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[handler])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    server.start()
    return server, port


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def report(name: str, ours: list[float], raw: list[float]) -> None:
    o, r = statistics.median(ours), statistics.median(raw)
    print(
        f"{name:38s} insitu p50 {o * 1e3:8.3f} ms   raw grpcio p50 {r * 1e3:8.3f} ms"
        f"   ratio {o / r:5.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="insitu-bench-"))
    with DevVault(log_path=tmp / "bao.log") as vault:
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        bootstrap_federation(client, TD)
        keys = KeyService(client)
        coord = Coordinator(
            CoordinatorSettings(
                trust_domain=TD,
                data_dir=tmp / "c",
                vault_addr=vault.address,
                listen="127.0.0.1:0",
                enrol_listen="127.0.0.1:0",
                heartbeat_interval_ms=60_000,
            ),
            keys=keys,
        )
        coord.start()
        admin_dir = tmp / "admin"
        admin = bootstrap_admin(keys, TD, "admin", admin_dir)
        target = f"127.0.0.1:{coord.port}"
        server_name = f"coordinator.{TD}"
        # Raw server uses a service cert from the same PKI; the client presents the same admin cert.
        skey = generate_private_key()
        sid = SpiffeId.service(TD, "echo")
        scert = keys.sign_csr(
            "service",
            build_csr(skey, sid),
            uri_sans=[sid.uri],
            dns_sans=[server_name],
            ttl_seconds=3600,
        )
        raw_server, raw_port = raw_echo_server(
            Credentials(key_to_pem(skey), scert.cert_pem, scert.chain_pem, keys.ca_bundle_pem())
        )
        raw_target = f"127.0.0.1:{raw_port}"

        def insitu_first_rpc() -> None:
            with Client(
                target,
                admin_dir / "cert.pem",
                admin_dir / "key.pem",
                admin_dir / "ca.pem",
                server_name=server_name,
            ) as c:
                c.health()

        def raw_first_rpc() -> None:
            ch = secure_channel(
                raw_target, ca_pem=admin.ca_pem, creds=admin, server_name=server_name
            )
            with ch:
                ch.unary_unary("/echo.Echo/Unary", _ident, _ident)(b"x" * 16, timeout=5)

        for f in (insitu_first_rpc, raw_first_rpc):
            timed(f, 5)  # warm up
        report(
            "handshake + first RPC", timed(insitu_first_rpc, args.n), timed(raw_first_rpc, args.n)
        )

        # Heartbeat round trip on an open stream.
        with Client(
            target,
            admin_dir / "cert.pem",
            admin_dir / "key.pem",
            admin_dir / "ca.pem",
            server_name=server_name,
        ) as c:
            c.create_join_token("bench-site", 600)
            token = c.create_join_token("bench-site", 600).token
        s = enrol(
            enrol_target=f"127.0.0.1:{coord.enrol_port}",
            coordinator=target,
            site_id="bench-site",
            token=token,
            ca_pem=admin.ca_pem,
            site_dir=tmp / "site",
            trust_domain=TD,
        )
        site_creds = Credentials.load(s.tls_dir)

        def stream_rtt(channel: grpc.Channel, call, first, make, n: int) -> list[float]:  # type: ignore[no-untyped-def]
            out: queue.Queue[object] = queue.Queue()
            out.put(first)

            def gen():  # type: ignore[no-untyped-def]
                while (m := out.get()) is not None:
                    yield m

            responses = call(gen())
            next(responses)  # welcome / first echo
            times = []
            for i in range(n):
                t = time.perf_counter()
                out.put(make(i))
                next(responses)
                times.append(time.perf_counter() - t)
            out.put(None)
            return times

        sch = secure_channel(
            target, ca_pem=site_creds.ca_pem, creds=site_creds, server_name=server_name
        )
        hello = session_pb2.SiteMessage(hello=session_pb2.Hello(site_id="bench-site"))
        hb = lambda i: session_pb2.SiteMessage(heartbeat=session_pb2.Heartbeat(seq=i))  # noqa: E731
        ours = stream_rtt(sch, session_pb2_grpc.SiteSessionStub(sch).Connect, hello, hb, args.n * 5)
        rch = secure_channel(raw_target, ca_pem=admin.ca_pem, creds=admin, server_name=server_name)
        payload = hb(1).SerializeToString()
        raw = stream_rtt(
            rch,
            rch.stream_stream("/echo.Echo/Bidi", _ident, _ident),
            b"hi",
            lambda i: payload,
            args.n * 5,
        )
        report("session heartbeat round trip", ours, raw)
        sch.close()
        rch.close()
        threading.Thread(target=raw_server.stop, args=(0,)).start()
        coord.stop(0.5)


if __name__ == "__main__":
    main()
