"""Thin gRPC servicers: unpack the request, call a plain handler, pack the reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from coordinator import admin, enrolment
from coordinator.session_stream import serve_session
from insitu._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    enrolment_pb2,
    enrolment_pb2_grpc,
    identity_pb2,
    session_pb2,
    session_pb2_grpc,
)
from insitu.identity.principal import current_principal
from insitu.rpc.chain import annotate

if TYPE_CHECKING:
    from coordinator.server import Coordinator

__all__ = ["AdminServicer", "EnrolmentServicer", "SiteSessionServicer"]


def _issued(e: enrolment.Enrolled) -> identity_pb2.IssuedCertificate:
    return identity_pb2.IssuedCertificate(
        spiffe_id=e.spiffe_id.uri,
        cert_pem=e.cert.cert_pem,
        chain_pem=e.cert.chain_pem,
        ca_pem=e.ca_pem,
        serial_hex=f"{e.cert.serial:x}",
        not_after_unix=int(e.cert.not_after.timestamp()),
    )


class EnrolmentServicer(enrolment_pb2_grpc.EnrolmentServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def Enrol(
        self, request: enrolment_pb2.EnrolRequest, context: grpc.ServicerContext
    ) -> enrolment_pb2.EnrolResponse:
        result, token_id = enrolment.enrol_site(
            self.c.store,
            self.c.keys,
            self.c.settings,
            request.site_id,
            request.join_token,
            request.csr_pem,
        )
        annotate(token_id=token_id, serial=f"{result.cert.serial:x}")
        return enrolment_pb2.EnrolResponse(
            certificate=_issued(result), trust_domain=self.c.settings.trust_domain
        )


class SiteSessionServicer(session_pb2_grpc.SiteSessionServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def Connect(
        self, request_iterator: Iterator[session_pb2.SiteMessage], context: grpc.ServicerContext
    ) -> Iterator[session_pb2.CoordinatorMessage]:
        principal = current_principal()
        yield from serve_session(
            request_iterator,
            principal,
            self.c.sessions,
            self.c.store,
            self.c.settings.heartbeat_interval_ms,
        )

    def Renew(
        self, request: session_pb2.RenewRequest, context: grpc.ServicerContext
    ) -> session_pb2.RenewResponse:
        principal = current_principal()
        result = enrolment.renew_site_cert(
            self.c.store, self.c.keys, self.c.settings, principal.name, request.csr_pem
        )
        annotate(serial=f"{result.cert.serial:x}")
        return session_pb2.RenewResponse(certificate=_issued(result))


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateJoinTokenResponse:
        minted = enrolment.mint_join_token(
            self.c.store,
            self.c.settings,
            request.site_id,
            int(request.ttl_seconds),
            current_principal().spiffe_id.uri,
        )
        annotate(token_id=minted.token_id)
        return admin_pb2.CreateJoinTokenResponse(
            token=minted.token,
            token_id=minted.token_id,
            site_id=minted.site_id,
            expires_unix=minted.expires_at,
        )

    def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        return admin_pb2.ListSitesResponse(sites=admin.list_sites(self.c.store, self.c.sessions))

    def GetSite(
        self, request: admin_pb2.GetSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Site:
        return admin.get_site(self.c.store, self.c.sessions, request.site_id)

    def RevokeSite(
        self, request: admin_pb2.RevokeSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeSiteResponse:
        site, n = admin.revoke_site(
            self.c.store,
            self.c.sessions,
            self.c.keys,
            self.c.revocation,
            request.site_id,
            request.reason,
        )
        return admin_pb2.RevokeSiteResponse(site=site, revoked_certificates=n)
