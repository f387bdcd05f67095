"""The site's own mTLS API (Predict, PredictStream) for callers inside the hospital:
the same layer chain as the coordinator (errors → authn → authz → audit), authorized
locally by :class:`SiteAuthorizer`. The listener's certificate follows renewals
without a restart (dynamic TLS credentials read the current identity per handshake).
"""

from __future__ import annotations

from typing import Any

import grpc

from insitu._proto.v1 import site_pb2, site_pb2_grpc
from insitu.identity.credentials import Credentials
from insitu.identity.principal import current_principal
from insitu.rpc.audit import RpcAuditor
from insitu.rpc.authn import Authenticator
from insitu.rpc.chain import annotate
from insitu.rpc.revocation import RevocationList
from insitu.rpc.server import build_server
from site_node.releases import SiteReleases
from site_node.serving.service import ServingRuntime
from site_node.serving.servicer import SiteApiServicer
from site_node.settings import SiteSettings
from site_node.site_authz import SiteAuthorizer, SiteAuthState

__all__ = ["SiteApiServer"]


def _dynamic_credentials(settings: SiteSettings) -> grpc.ServerCredentials:
    def config(creds: Credentials) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(creds.key_pem, creds.cert_chain_pem)], root_certificates=creds.ca_pem.encode()
        )

    current = {"serial": Credentials.load(settings.tls_dir).info.serial}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        creds = Credentials.load(settings.tls_dir)
        serial = creds.info.serial
        if serial == current["serial"]:
            return None
        current["serial"] = serial
        return config(creds)

    return grpc.dynamic_ssl_server_credentials(
        config(Credentials.load(settings.tls_dir)), fetch, require_client_authentication=True
    )


class _SiteApi(SiteApiServicer):
    """Serving (Predict) plus feature releases on one SiteApi service."""

    def __init__(self, runtime: ServingRuntime, releases: SiteReleases, **kwargs: Any) -> None:
        super().__init__(runtime, **kwargs)
        self._releases = releases

    def ReleaseFeatures(
        self, request: site_pb2.ReleaseFeaturesRequest, context: grpc.ServicerContext
    ) -> site_pb2.ReleaseFeaturesResponse:
        approver = current_principal().spiffe_id.uri
        r = self._releases.release(request.dataset, request.job_id, approver)
        annotate(
            release_id=r.release_id,
            dataset=request.dataset,
            job_id=request.job_id,
            rows_out=str(r.rows_out),
            k_achieved=str(r.k_achieved),
        )
        return r


class SiteApiServer:
    def __init__(
        self,
        settings: SiteSettings,
        runtime: ServingRuntime,
        authorizer: SiteAuthorizer,
        state: SiteAuthState,
        auditor: RpcAuditor,
        releases: SiteReleases,
    ) -> None:
        self.revocation = RevocationList(state.revoked, refresh_s=2.0, max_stale_s=600.0)
        authenticator = Authenticator(settings.trust_domain, self.revocation)

        def register(server: grpc.Server) -> list[str]:
            site_pb2_grpc.add_SiteApiServicer_to_server(
                _SiteApi(runtime, releases, model_guard=authorizer.guard_model), server
            )
            return ["insitu.v1.SiteApi"]

        self.server, self.port, _ = build_server(
            address=settings.api_listen,
            credentials=_dynamic_credentials(settings),
            authenticator=authenticator,
            authorizer=authorizer,
            register=register,
            auditor=auditor,
        )

    def start(self) -> None:
        # Revocation status is unknown (calls fail closed) until the coordinator's first sync.
        self.revocation.start(initial=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(1).wait(2)
        self.revocation.stop()
