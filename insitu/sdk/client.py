"""The insitu client SDK (sync). See :mod:`insitu.sdk.aio` for the asyncio twin.

Every call has a deadline; idempotent reads retry on UNAVAILABLE (gRPC retry policy);
failures raise typed :mod:`insitu.sdk.errors`.

Example::

    with Client("127.0.0.1:7443", cert="admin/cert.pem", key="admin/key.pem",
                ca="admin/ca.pem", server_name="coordinator.demo.insitu") as c:
        print(c.health())
        for site in c.list_sites():
            print(site.site_id, site.connected)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from insitu._proto.v1 import admin_pb2, admin_pb2_grpc
from insitu.identity.credentials import Credentials
from insitu.rpc.methods import METHODS
from insitu.rpc.server import secure_channel
from insitu.sdk.errors import from_rpc_error

__all__ = ["Client", "JoinToken", "SiteInfo", "retry_service_config"]

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


def retry_service_config() -> str:
    """gRPC service config: retry idempotent methods (from the method table) on UNAVAILABLE."""
    names = []
    for full, rule in METHODS.items():
        if rule.idempotent:
            service, method = full.lstrip("/").split("/")
            names.append({"service": service, "method": method})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


@dataclass(frozen=True)
class SiteInfo:
    site_id: str
    spiffe_id: str
    status: str
    connected: bool
    enrolled_unix: int
    last_seen_unix: int
    cert_serial_hex: str
    cert_not_after_unix: int
    session_id: str

    @classmethod
    def from_proto(cls, s: admin_pb2.Site) -> SiteInfo:
        status = {
            admin_pb2.SITE_STATUS_ENROLLED: "enrolled",
            admin_pb2.SITE_STATUS_REVOKED: "revoked",
        }.get(s.status, "unknown")
        return cls(
            s.site_id,
            s.spiffe_id,
            status,
            s.connected,
            s.enrolled_unix,
            s.last_seen_unix,
            s.cert_serial_hex,
            s.cert_not_after_unix,
            s.session_id,
        )


@dataclass(frozen=True)
class JoinToken:
    token: str
    token_id: str
    site_id: str
    expires_unix: int

    def __repr__(self) -> str:
        return f"JoinToken(token_id={self.token_id!r}, site_id={self.site_id!r})"


def load_credentials(cert: str | Path, key: str | Path, ca: str | Path) -> Credentials:
    cert_text = Path(cert).read_text()
    chain_path = Path(cert).with_name("chain.pem")
    chain = chain_path.read_text() if chain_path.exists() else ""
    return Credentials(Path(key).read_bytes(), cert_text, chain, Path(ca).read_text())


class Client:
    """Synchronous client of the coordinator's mTLS API."""

    def __init__(
        self,
        target: str,
        cert: str | Path,
        key: str | Path,
        ca: str | Path,
        *,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._creds = load_credentials(cert, key, ca)
        self.timeout = timeout
        self._channel = secure_channel(
            target,
            ca_pem=self._creds.ca_pem,
            creds=self._creds,
            server_name=server_name,
            extra_options=[
                ("grpc.service_config", retry_service_config()),
                ("grpc.enable_retries", 1),
            ],
        )
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The serving status name of ``service`` ("" is the whole server)."""
        r = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    def list_sites(self, *, timeout: float | None = None) -> list[SiteInfo]:
        r = self._call(self._admin.ListSites, admin_pb2.ListSitesRequest(), timeout)
        return [SiteInfo.from_proto(s) for s in r.sites]

    def get_site(self, site_id: str, *, timeout: float | None = None) -> SiteInfo:
        r = self._call(self._admin.GetSite, admin_pb2.GetSiteRequest(site_id=site_id), timeout)
        return SiteInfo.from_proto(r)

    def create_join_token(
        self, site_id: str, ttl_seconds: int = 3600, *, timeout: float | None = None
    ) -> JoinToken:
        r = self._call(
            self._admin.CreateJoinToken,
            admin_pb2.CreateJoinTokenRequest(site_id=site_id, ttl_seconds=ttl_seconds),
            timeout,
        )
        return JoinToken(r.token, r.token_id, r.site_id, r.expires_unix)

    def revoke_site(
        self, site_id: str, reason: str = "", *, timeout: float | None = None
    ) -> tuple[SiteInfo, int]:
        r = self._call(
            self._admin.RevokeSite,
            admin_pb2.RevokeSiteRequest(site_id=site_id, reason=reason),
            timeout,
        )
        return SiteInfo.from_proto(r.site), r.revoked_certificates
