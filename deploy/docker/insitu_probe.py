#!/usr/bin/env python3
"""Liveness / readiness probes for insitu containers (installed as ``insitu-probe``).

Kubernetes' native ``grpc:`` probe speaks plaintext only, and every insitu listener is TLS,
so the probes are exec probes:

``insitu-probe coordinator --ca-file F --server-name N [--address 127.0.0.1:7444]``
    gRPC ``grpc.health.v1.Health/Check`` over server-authenticated TLS against the
    enrolment listener (the one listener that needs no client certificate; it serves
    health publicly). Exit 0 when the server answers SERVING.

``insitu-probe site --site-dir D --check live|ready [--max-age S]``
    A site only dials out: it has no listener to ask. ``live``: its identity (tls/cert.pem)
    is there and unexpired, so the daemon can still reach the federation. ``ready``: its
    ``status.json`` says connected and was written in the last S seconds (heartbeats
    rewrite it).

Exit codes: 0 healthy, 1 unhealthy (one line on stderr says why, with no secret in it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["check_coordinator", "check_site", "main"]


class ProbeFailed(Exception):
    """The component is not healthy; the message says why."""


def check_coordinator(address: str, ca_file: Path, server_name: str, timeout_s: float) -> None:
    """Raise :class:`ProbeFailed` unless the TLS health check answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        ca = ca_file.read_bytes()
    except OSError as e:
        raise ProbeFailed(f"cannot read CA file {ca_file}: {e.strerror}") from None
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.ssl_target_name_override", server_name)],
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
        )
    except grpc.RpcError as e:
        raise ProbeFailed(f"health check failed: {e.code().name}") from None
    finally:
        channel.close()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise ProbeFailed(f"coordinator is {name}")


def check_site(site_dir: Path, check: str, max_age_s: float, now: float | None = None) -> None:
    """Raise :class:`ProbeFailed` unless the site is live (or ready, see the module doc)."""
    moment = time.time() if now is None else now
    if check == "live":
        from cryptography import x509

        cert_path = site_dir / "tls" / "cert.pem"
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            raise ProbeFailed(f"no readable identity at {cert_path}") from None
        if cert.not_valid_after_utc <= datetime.fromtimestamp(moment, UTC):
            raise ProbeFailed("site certificate has expired")
        return
    status_path = site_dir / "status.json"
    try:
        age = moment - status_path.stat().st_mtime
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        raise ProbeFailed(f"no readable status at {status_path}") from None
    if not isinstance(status, dict) or status.get("connected") is not True:
        raise ProbeFailed("site is not connected to the coordinator")
    if age > max_age_s:
        raise ProbeFailed(f"site status is {age:.0f}s old (max {max_age_s:.0f}s)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="insitu-probe", description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="component", required=True)
    c = sub.add_parser("coordinator", help="TLS gRPC health check of the coordinator")
    c.add_argument("--address", default="127.0.0.1:7444", help="enrolment listener HOST:PORT")
    c.add_argument("--ca-file", type=Path, required=True, help="federation CA (PEM)")
    c.add_argument("--server-name", required=True, help="coordinator.<trust domain>")
    c.add_argument("--timeout", type=float, default=3.0)
    s = sub.add_parser("site", help="site daemon state")
    s.add_argument("--site-dir", type=Path, required=True)
    s.add_argument("--check", choices=("live", "ready"), required=True)
    s.add_argument("--max-age", type=float, default=60.0, help="seconds (ready only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.component == "coordinator":
            check_coordinator(args.address, args.ca_file, args.server_name, args.timeout)
        else:
            check_site(args.site_dir, args.check, args.max_age)
    except ProbeFailed as e:
        print(f"insitu-probe: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
