"""The asyncio twin of :class:`insitu.sdk.Client`.

Example::

    async with AsyncClient(target, cert=..., key=..., ca=..., server_name=...) as c:
        sites = await c.list_sites()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from insitu._proto.v1 import admin_pb2, admin_pb2_grpc
from insitu.rpc.server import channel_options
from insitu.sdk.client import (
    DEFAULT_TIMEOUT_S,
    JoinToken,
    SiteInfo,
    load_credentials,
    retry_service_config,
)
from insitu.sdk.errors import from_rpc_error

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
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
        creds = load_credentials(cert, key, ca)
        self.timeout = timeout
        channel_creds = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem.encode(),
            private_key=creds.key_pem,
            certificate_chain=creds.cert_chain_pem,
        )
        self._channel = grpc.aio.secure_channel(
            target,
            channel_creds,
            options=[
                *channel_options(server_name),
                ("grpc.service_config", retry_service_config()),
                ("grpc.enable_retries", 1),
            ],
        )
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, fn: Callable[..., Awaitable[T]], request: Any, timeout: float | None
    ) -> T:
        try:
            return await fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        r = await self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    async def list_sites(self, *, timeout: float | None = None) -> list[SiteInfo]:
        r = await self._call(self._admin.ListSites, admin_pb2.ListSitesRequest(), timeout)
        return [SiteInfo.from_proto(s) for s in r.sites]

    async def get_site(self, site_id: str, *, timeout: float | None = None) -> SiteInfo:
        r = await self._call(
            self._admin.GetSite, admin_pb2.GetSiteRequest(site_id=site_id), timeout
        )
        return SiteInfo.from_proto(r)

    async def create_join_token(
        self, site_id: str, ttl_seconds: int = 3600, *, timeout: float | None = None
    ) -> JoinToken:
        r = await self._call(
            self._admin.CreateJoinToken,
            admin_pb2.CreateJoinTokenRequest(site_id=site_id, ttl_seconds=ttl_seconds),
            timeout,
        )
        return JoinToken(r.token, r.token_id, r.site_id, r.expires_unix)

    async def revoke_site(
        self, site_id: str, reason: str = "", *, timeout: float | None = None
    ) -> tuple[SiteInfo, int]:
        r = await self._call(
            self._admin.RevokeSite,
            admin_pb2.RevokeSiteRequest(site_id=site_id, reason=reason),
            timeout,
        )
        return SiteInfo.from_proto(r.site), r.revoked_certificates
