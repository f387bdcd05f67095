"""Server and channel factories: every insitu listener is built here, with one stated
layer order, TLS 1.3 credentials from Vault-issued certificates, health and reflection.

Order on every server: tracing and metrics (outermost) → errors (one status mapping) →
authn (peer cert → Principal) → authz (method table + policy) → audit (append before and
after; fail closed) → thin servicer → plain handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from insitu.errors import InsituError
from insitu.identity.credentials import Credentials
from insitu.rpc.audit import AuditLayer, RpcAuditor
from insitu.rpc.authn import Authenticator, AuthnLayer
from insitu.rpc.authz import Authorizer, AuthzLayer
from insitu.rpc.chain import Call, Layer, LayerInterceptor
from insitu.rpc.errors import ErrorLayer
from insitu.rpc.methods import METHODS
from insitu.telemetry.metrics import MetricsLayer
from insitu.telemetry.tracing import TracingLayer

__all__ = [
    "KEEPALIVE_OPTIONS",
    "build_server",
    "channel_options",
    "secure_channel",
    "server_credentials",
]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Detecting a hung peer needs http2 ping timeouts; keepalive alone took ~60 s.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def server_credentials(
    creds: Credentials, *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """TLS credentials for a listener; client certificates are required unless told not
    to (only the enrolment listener is told not to)."""
    return grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_chain_pem)],
        root_certificates=creds.ca_pem.encode(),
        require_client_auth=require_client_auth,
    )


def build_server(
    *,
    address: str,
    credentials: grpc.ServerCredentials,
    authenticator: Authenticator,
    authorizer: Authorizer | None,
    register: Callable[[grpc.Server], Iterable[str]],
    auditor: RpcAuditor | None = None,
    public_methods: frozenset[str] = frozenset(),
    max_workers: int = 64,
    extra_layers: Sequence[Layer] = (),
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build (not start) a TLS server with the full layer chain.

    ``register`` adds the servicers and returns their full service names (for health and
    reflection). Returns the server, the bound port, and the health servicer.
    """
    on_authn_failure = None
    if auditor is not None:

        def on_authn_failure(call: Call, e: InsituError) -> None:
            auditor.record_call(call, "authn.failure", "denied", e.code.value)

    # Tracing and metrics are outermost: they see every refusal and the status the client
    # sees, and the trace id is on the call before the audit layer writes.
    layers: list[Layer] = [
        TracingLayer(),
        MetricsLayer(),
        ErrorLayer(),
        AuthnLayer(authenticator, public_methods=public_methods, on_failure=on_authn_failure),
        AuthzLayer(authorizer, public_methods=public_methods, recorder=auditor),
    ]
    if auditor is not None:
        layers.append(AuditLayer(auditor))
    layers.extend(extra_layers)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[LayerInterceptor(layers)],
        options=KEEPALIVE_OPTIONS,
        maximum_concurrent_rpcs=max_workers * 4,
    )
    names = list(register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port, health_servicer


def channel_options(server_name: str | None) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = list(KEEPALIVE_OPTIONS)
    if server_name:
        # Pin the coordinator's DNS SAN: only the Vault `service` role can issue it.
        opts.append(("grpc.ssl_target_name_override", server_name))
        opts.append(("grpc.default_authority", server_name))
    return opts


def secure_channel(
    target: str,
    *,
    ca_pem: str | bytes,
    creds: Credentials | None,
    server_name: str | None,
    extra_options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A TLS channel; with ``creds`` it presents the client certificate (mTLS)."""
    ca = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
    channel_creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=creds.key_pem if creds else None,
        certificate_chain=creds.cert_chain_pem if creds else None,
    )
    return grpc.secure_channel(
        target, channel_creds, options=[*channel_options(server_name), *extra_options]
    )


def known_methods() -> frozenset[str]:
    return frozenset(METHODS)
