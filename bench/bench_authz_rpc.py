"""Issue #4 benchmark: authorized RPC throughput versus the same RPC with authz disabled,
both measured in the same run against the same coordinator state.

One real Coordinator (DevVault, PKI, Cedar policies, SQLite store and audit log) is
started; then four extra listeners are built with ``insitu.rpc.server.build_server``
around the coordinator's own AdminServicer, authenticator and auditor:

    cedar + audit   the production chain (what coordinator/server.py builds)
    none  + audit   ``authorizer=None``: only the transport rule (identity kind per method)
    cedar           the audit layer left out, to isolate the authz cost
    none            the audit layer left out

Clients run in a separate process (spawned) so client work does not share the server's
GIL; each run makes a fixed number of calls from a few threads over one mTLS channel.
Variants are interleaved and repeated; the median calls/s per variant is reported with
the ratio cedar/none (target >= 0.9x). The caller is the bootstrap federation_admin.

Run: .venv/bin/python bench/bench_authz_rpc.py [--calls 3000] [--threads 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

TD = "bench.insitu"
METHODS = {
    "ListSites": "/insitu.v1.Admin/ListSites",
    "Health.Check": "/grpc.health.v1.Health/Check",
}
TARGET = 0.9


# -- client process -----------------------------------------------------------------------


def _client_main(conn: Connection, admin_dir: str, server_name: str) -> None:
    """Serves (port, method, calls, threads) commands; answers elapsed seconds."""
    from grpc_health.v1 import health_pb2

    from insitu._proto.v1 import admin_pb2
    from insitu.identity.credentials import Credentials
    from insitu.rpc.server import secure_channel

    creds = Credentials.load(Path(admin_dir))
    requests: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
        METHODS["ListSites"]: (admin_pb2.ListSitesRequest().SerializeToString(),
                               admin_pb2.ListSitesResponse.FromString),
        METHODS["Health.Check"]: (health_pb2.HealthCheckRequest().SerializeToString(),
                                  health_pb2.HealthCheckResponse.FromString),
    }
    while (cmd := conn.recv()) is not None:
        port, method, calls, threads = cmd
        payload, decode = requests[method]
        ch = secure_channel(f"127.0.0.1:{port}", ca_pem=creds.ca_pem, creds=creds,
                            server_name=server_name)
        rpc = ch.unary_unary(method, request_serializer=lambda b: b,
                             response_deserializer=decode)
        for _ in range(20):  # handshake + warm-up, untimed
            rpc(payload, timeout=10)
        per_thread = calls // threads
        errors: list[BaseException] = []
        ts = [threading.Thread(target=_calls, args=(rpc, payload, per_thread, errors))
              for _ in range(threads)]
        start = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - start
        ch.close()
        conn.send(("error", repr(errors[0])) if errors else ("ok", per_thread * threads / elapsed))


def _calls(rpc: Callable[..., object], payload: bytes, n: int,
           errors: list[BaseException]) -> None:
    try:
        for _ in range(n):
            rpc(payload, timeout=10)
    except BaseException as e:  # reported to the parent, never swallowed
        errors.append(e)


# -- servers --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000, help="calls per measurement")
    ap.add_argument("--threads", type=int, default=4, help="client threads")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant")
    args = ap.parse_args()

    import hvac

    from coordinator.server import Coordinator
    from coordinator.servicers import AdminServicer
    from coordinator.settings import CoordinatorSettings
    from insitu._proto.v1 import admin_pb2_grpc
    from insitu.identity.admin_bootstrap import bootstrap_admin
    from insitu.keys import DevVault, KeyService, bootstrap_federation
    from insitu.rpc.server import build_server, server_credentials

    load = os.getloadavg()
    print(f"cpus {os.cpu_count()}  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="insitu-bench-authz-"))
    with DevVault(log_path=tmp / "bao.log") as vault:
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        bootstrap_federation(client, TD)
        keys = KeyService(client)
        coord = Coordinator(
            CoordinatorSettings(trust_domain=TD, data_dir=tmp / "c", vault_addr=vault.address,
                                listen="127.0.0.1:0", enrol_listen="127.0.0.1:0",
                                heartbeat_interval_ms=60_000),
            keys=keys,
        )
        coord.start()
        admin_dir = tmp / "admin"
        bootstrap_admin(keys, TD, "admin", admin_dir)
        assert coord.credentials is not None
        creds = server_credentials(coord.credentials, require_client_auth=True)

        def register(server: grpc.Server) -> list[str]:
            admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(coord), server)
            return ["insitu.v1.Admin"]

        servers: dict[str, int] = {}
        started: list[grpc.Server] = []
        for name, authorizer, auditor in (
            ("cedar+audit", coord.authorizer, coord.auditor),
            ("none+audit", None, coord.auditor),
            ("cedar", coord.authorizer, None),
            ("none", None, None),
        ):
            srv, port, _ = build_server(address="127.0.0.1:0", credentials=creds,
                                        authenticator=coord.authenticator,
                                        authorizer=authorizer, register=register,
                                        auditor=auditor)
            srv.start()
            started.append(srv)
            servers[name] = port

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client_main,
                           args=(child, str(admin_dir), coord.settings.server_name))
        proc.start()

        def measure(variant: str, method: str) -> float:
            parent.send((servers[variant], method, args.calls, args.threads))
            status, value = parent.recv()
            if status != "ok":
                raise SystemExit(f"{variant} {method}: client failed: {value}")
            return float(value)

        print(f"{args.calls} calls x {args.repeats} runs per variant, {args.threads} client "
              "threads in a separate process, one mTLS channel; caller: federation_admin")
        results: dict[tuple[str, str], float] = {}
        for label, method in METHODS.items():
            runs: dict[str, list[float]] = {v: [] for v in servers}
            for _ in range(args.repeats):
                for variant in servers:  # interleaved, so drift hits every variant alike
                    runs[variant].append(measure(variant, method))
            print(f"\n{label} ({method})")
            for variant in servers:
                results[(label, variant)] = statistics.median(runs[variant])
                spread = ", ".join(f"{r:.0f}" for r in runs[variant])
                print(f"  {variant:12s} {results[(label, variant)]:8.0f} calls/s   [{spread}]")
            for audit in ("+audit", ""):
                ratio = results[(label, "cedar" + audit)] / results[(label, "none" + audit)]
                verdict = "meets" if ratio >= TARGET else "MISSES"
                tag = "audit on " if audit else "audit off"
                print(f"  ratio cedar/none, {tag}: {ratio:5.2f}x  ({verdict} target "
                      f">= {TARGET}x)")

        # The decision alone, in-process, single thread: what each authorized call adds.
        from insitu._proto.v1 import admin_pb2
        from insitu.identity.credentials import Credentials
        from insitu.rpc.methods import rule_for

        principal = coord.authenticator.check(Credentials.load(admin_dir).info)
        rule = rule_for(METHODS["ListSites"])
        assert rule is not None
        req = admin_pb2.ListSitesRequest()
        res = rule.resource(req)
        for _ in range(100):
            assert coord.authorizer.authorize(principal, rule.action, res, {"request": req}).allowed
        n = 3000
        t0 = time.perf_counter()
        for _ in range(n):
            coord.authorizer.authorize(principal, rule.action, res, {"request": req})
        decision_us = (time.perf_counter() - t0) / n * 1e6
        print(f"\nCoordinatorAuthorizer.authorize in-process, one thread: {decision_us:.0f} us "
              "per decision")

        per_call = {}
        for label in METHODS:
            a = results[(label, "cedar")]
            b = results[(label, "none")]
            per_call[label] = (1 / a - 1 / b) * 1e6
        print("\nauthz cost per call (audit off, from throughput): " + ", ".join(
            f"{k} {v:.0f} us" for k, v in per_call.items()))
        missed = [k for k in METHODS if results[(k, "cedar")] / results[(k, "none")] < TARGET]
        if missed:
            base_us = 1e6 / results[("ListSites", "none")]
            print(
                f"why below target: each authorized call spends ~{decision_us:.0f} us in "
                "CoordinatorAuthorizer.authorize (build the Cedar request and entity slice, "
                "then cedarpy.is_authorized, which holds the GIL), against a whole call that "
                f"costs the server ~{base_us:.0f} us of mostly GIL-bound Python without it; "
                "the transport rule alone is a dict lookup. Under concurrency the decisions "
                "serialize on the GIL, so the throughput cost per call exceeds the "
                "single-thread decision time. With the audit layer on, every call also pays "
                "two durable (fsync) appends, so the authz share is smaller, but those "
                "numbers follow the disk and are noisy on a shared machine.")

        parent.send(None)
        proc.join(10)
        for srv in started:
            srv.stop(0)
        coord.stop(0.5)


if __name__ == "__main__":
    main()
