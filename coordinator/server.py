"""The coordinator process: its own service certificate from Vault, the mTLS listener
(sessions, admin), and the separate enrolment listener (server-authenticated TLS, only
``Enrol``, authenticated by join token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from coordinator.authorization import CoordinatorAuthorizer
from coordinator.deployments import DeploymentManager
from coordinator.features import FeatureIntake, PseudonymKeys
from coordinator.jobs import JobManager, JobSettings
from coordinator.jobs.store import open_job_store
from coordinator.registry import ModelRegistry
from coordinator.resources import install_resolvers
from coordinator.servicers import (
    AdminServicer,
    EnrolmentServicer,
    FeaturesServicer,
    JobsServicer,
    ModelsServicer,
    SiteSessionServicer,
)
from coordinator.sessions import Session, SessionRegistry
from coordinator.settings import CoordinatorSettings, default_policy_dir
from coordinator.store import CoordinatorStore
from coordinator.witness import CoordinatorWitness
from insitu._proto.v1 import (
    admin_pb2_grpc,
    enrolment_pb2_grpc,
    features_pb2_grpc,
    jobs_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from insitu.audit import AuditLog, SqliteAuditStore
from insitu.authz import PolicyEngine, Resource
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService
from insitu.rpc.audit import RpcAuditor
from insitu.rpc.authn import Authenticator
from insitu.rpc.revocation import RevocationList
from insitu.rpc.server import build_server, server_credentials
from insitu.sandbox import Limits
from insitu.telemetry.setup import start_observability

__all__ = ["Coordinator", "connect_vault"]

log = logging.getLogger(__name__)

ENROL_METHOD = "/insitu.v1.Enrolment/Enrol"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ENDPOINTS_FILE = "endpoints.json"
AUDIT_KEY = "audit-signing"
AUDIT_KEY_NAME = "insitu-audit"


def open_audit_log(
    path: Path, origin: str, node: str, keys: KeyService, every_n: int = 1000, every_s: float = 60.0
) -> AuditLog:
    """An audit log whose checkpoints Vault transit signs (key ``audit-signing``)."""
    return AuditLog(
        SqliteAuditStore(path),
        origin=origin,
        node=node,
        signer=lambda body: keys.sign(AUDIT_KEY, body),
        key_name=AUDIT_KEY_NAME,
        public_key=keys.public_key(AUDIT_KEY),
        checkpoint_every_n=every_n,
        checkpoint_every_s=every_s,
    )


def connect_vault(s: CoordinatorSettings) -> KeyService:
    """AppRole in production; a token file only where the settings name one (dev)."""
    if s.vault_role_id_file and s.vault_secret_id_file:
        return KeyService.from_approle(
            s.vault_addr,
            s.vault_role_id_file.read_text().strip(),
            s.vault_secret_id_file.read_text().strip(),
        )
    if s.vault_token_file:
        return KeyService.from_token(s.vault_addr, s.vault_token_file.read_text().strip())
    raise InsituError(
        ErrorCode.CONFIG,
        "no Vault credentials: set vault_role_id_file and "
        "vault_secret_id_file (or vault_token_file for dev)",
    )


class Coordinator:
    """One coordinator: build with settings, :meth:`start`, :meth:`stop`."""

    def __init__(self, settings: CoordinatorSettings, keys: KeyService | None = None) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys = keys or connect_vault(settings)
        self.store = CoordinatorStore(self.data_dir / "coordinator.db")
        self.sessions = SessionRegistry()
        self.revocation = RevocationList(
            self.keys.revoked_serials,
            refresh_s=settings.crl_refresh_s,
            max_stale_s=settings.crl_max_stale_s,
        )
        self.revocation.on_revoke(
            lambda serial: self.sessions.terminate_serial(
                serial, "certificate revoked", ErrorCode.CERT_REVOKED.value
            )
        )
        self.authenticator = Authenticator(settings.trust_domain, self.revocation)
        self.policy_dir = settings.policy_dir or default_policy_dir()
        self.engine = PolicyEngine.load_or_deny_all(
            self.policy_dir, trust_domain=settings.trust_domain
        )
        self.authorizer = CoordinatorAuthorizer(
            self.engine, self.store, self.keys, settings.trust_domain
        )
        self.audit_log = open_audit_log(
            self.data_dir / "audit.db",
            f"{settings.trust_domain}/coordinator",
            "coordinator",
            self.keys,
            settings.audit_checkpoint_every_n,
            settings.audit_checkpoint_every_s,
        )
        self.auditor = RpcAuditor(self.audit_log, "coordinator")
        self.authorizer.on_bootstrap_seen = lambda uri: self.auditor.event(
            "admin.bootstrap",
            "admin.bootstrap",
            ("User", uri),
            attrs={"role": "federation_admin", "source": "vault-kv"},
        )
        self.registry = ModelRegistry(self.data_dir / "models", self.keys)
        self.jobs = JobManager(
            self.sessions,
            self.registry,
            self.data_dir,
            settings.trust_domain,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("Job", str(attrs.get("job_id", "-"))), attrs=attrs
            ),
            store=open_job_store(self.data_dir, settings.job_store_dsn),
            settings=JobSettings(
                approval_timeout_s=settings.job_approval_timeout_s,
                max_update_bytes=settings.max_update_bytes,
                unsafe_unsandboxed_serverapps=settings.unsafe_unsandboxed_serverapps,
                job_max_wall_s=settings.job_max_wall_s,
                max_concurrent_jobs=settings.max_concurrent_jobs,
                serverapp_limits=Limits(
                    memory_mb=settings.serverapp_memory_mb,
                    cpu_seconds=settings.serverapp_cpu_seconds,
                    processes=256, open_files=1024, scratch_mb=1024,
                    message_timeout_s=86_400.0,
                ),
            ),
        )
        self.deployments = DeploymentManager(
            self.sessions, self.registry, self.keys, self.store, settings.trust_domain
        )
        self.deployments.revoked = self.revocation.snapshot
        self.revocation.on_revoke(lambda serial: self.deployments.sync_all())
        self.sessions.on_change(
            lambda event, s: self.deployments.sync(s) if event == "open" else None
        )
        self.pseudonyms = PseudonymKeys(self.keys)
        self.features = FeatureIntake(
            self.data_dir / "features",
            self.keys,
            self.store,
            self.jobs,
            check=self._site_may,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("FeatureRelease", str(attrs.get("release_id", "-"))), attrs=attrs
            ),
        )
        self.sessions.on_change(self._send_pseudonym_key)
        self.witness = CoordinatorWitness(
            self.audit_log,
            self.sessions,
            self.store,
            settings.trust_domain,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("AuditLog", "coordinator"), outcome="failure", attrs=attrs
            ),
            interval_s=settings.witness_interval_s,
        )
        install_resolvers(self.authorizer, self.jobs, self.registry, self.features)
        # Everything a site sends besides Hello and heartbeats, routed by kind.
        self._routes: dict[str, Callable[[Session, session_pb2.SiteMessage], None]] = {
            "deploy_result": lambda s, m: self.deployments.on_result(s, m.deploy_result),
            "feature_batch": lambda s, m: self.features.on_chunk(s, m.feature_batch),
            "witness": lambda s, m: self.witness.on_note(s, m.witness),
            **self.jobs.routes,
        }
        self.server: grpc.Server | None = None
        self.enrol_server: grpc.Server | None = None
        self.port = 0
        self.enrol_port = 0
        self.credentials: Credentials | None = None

    # -- service identity ------------------------------------------------------------

    def service_credentials(self) -> Credentials:
        """The coordinator's own certificate; reissued when a third of its life is left."""
        tls = self.data_dir / "tls"
        try:
            creds = Credentials.load(tls)
            info = creds.info
            if info.lifetime_fraction_elapsed(datetime.now(UTC)) < 2 / 3:
                return creds
        except InsituError:
            pass
        td = self.settings.trust_domain
        key = generate_private_key()
        sid = SpiffeId.service(td, "coordinator")
        cert = self.keys.sign_csr(
            "service",
            build_csr(key, sid),
            uri_sans=[sid.uri],
            dns_sans=[self.settings.server_name, "localhost"],
            ip_sans=["127.0.0.1"],
            common_name=self.settings.server_name,
            ttl_seconds=self.settings.service_cert_ttl_s,
        )
        creds = Credentials(
            key_to_pem(key), cert.cert_pem, cert.chain_pem, self.keys.ca_bundle_pem()
        )
        creds.save(tls)
        return creds

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.revocation.start()
        creds = self.credentials = self.service_credentials()

        def register_main(server: grpc.Server) -> list[str]:
            session_pb2_grpc.add_SiteSessionServicer_to_server(SiteSessionServicer(self), server)
            admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self), server)
            jobs_pb2_grpc.add_JobsServicer_to_server(JobsServicer(self), server)
            jobs_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(self), server)
            features_pb2_grpc.add_FeaturesServicer_to_server(FeaturesServicer(self), server)
            return [
                "insitu.v1.SiteSession",
                "insitu.v1.Admin",
                "insitu.v1.Jobs",
                "insitu.v1.Models",
                "insitu.v1.Features",
            ]

        def register_enrol(server: grpc.Server) -> list[str]:
            enrolment_pb2_grpc.add_EnrolmentServicer_to_server(EnrolmentServicer(self), server)
            return ["insitu.v1.Enrolment"]

        self.server, self.port, _ = build_server(
            address=self.settings.listen,
            credentials=server_credentials(creds, require_client_auth=True),
            authenticator=self.authenticator,
            authorizer=self.authorizer,
            register=register_main,
            auditor=self.auditor,
        )
        # The one listener without client certificates: it serves only Enrol (+ health),
        # and Enrol authenticates by one-time join token.
        self.enrol_server, self.enrol_port, _ = build_server(
            address=self.settings.enrol_listen,
            credentials=server_credentials(creds, require_client_auth=False),
            authenticator=self.authenticator,
            authorizer=None,
            register=register_enrol,
            auditor=self.auditor,
            public_methods=frozenset({ENROL_METHOD, HEALTH_CHECK}),
            max_workers=8,
        )
        self.server.start()
        self.enrol_server.start()
        self.witness.start()
        self.metrics_server, self.metrics_port = start_observability(
            "insitu-coordinator", self.settings.metrics_listen, self.settings.trace_exporter,
            self.audit_log, lambda: self.credentials.info.not_after if self.credentials else None,
            "service")
        host = self.settings.advertise_host
        endpoints = {
            "listen": f"{host}:{self.port}",
            "enrol": f"{host}:{self.enrol_port}",
            "metrics": f"127.0.0.1:{self.metrics_port}",
            "server_name": self.settings.server_name,
            "trust_domain": self.settings.trust_domain,
        }
        (self.data_dir / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2))
        (self.data_dir / "ca.pem").write_text(creds.ca_pem)
        log.info(
            "coordinator listening on %s (mTLS) and %s (enrolment)",
            endpoints["listen"],
            endpoints["enrol"],
        )

    def _site_may(self, site_uri: str, action: str, resource: Resource) -> bool:
        from insitu.identity.principal import Principal

        site = self.sessions.get(SpiffeId.parse(site_uri).name)
        if site is None:
            return False
        p = Principal(SpiffeId.parse(site_uri), "", site.cert_serial, site.cert_not_after)
        return self.authorizer.check(p, action, resource)

    def _send_pseudonym_key(self, event: str, session: Session) -> None:
        if event != "open":
            return
        try:
            key_id, key = self.pseudonyms.current()
        except InsituError as e:
            log.error("pseudonym key unavailable: %s", e.detail)
            return
        session.outbound.put(
            session_pb2.CoordinatorMessage(
                pseudonym_key=session_pb2.PseudonymKey(key_id=key_id, key=key)
            )
        )

    def on_site_message(self, session: Session, msg: session_pb2.SiteMessage) -> None:
        """Everything a site sends besides Hello and heartbeats lands here."""
        kind = msg.WhichOneof("body") or ""
        route = self._routes.get(kind)
        if route is None:
            log.warning("site %s sent a %r message, which has no route: ignored",
                        session.site_id, kind)
            return
        route(session, msg)

    def reload_policy(self) -> tuple[str, str]:
        """Atomic: a refused set raises, is audited, and the old set stays in force."""
        try:
            old, new = self.engine.reload(self.policy_dir)
        except InsituError as e:
            self.auditor.event(
                "policy.reload",
                "policy.reload",
                ("Federation", "federation"),
                outcome="failure",
                reason="policy_invalid",
                attrs={"old_hash": self.engine.policy_hash, "error": e.detail[:200]},
            )
            raise
        self.auditor.event(
            "policy.reload",
            "policy.reload",
            ("Federation", "federation"),
            attrs={"old_hash": old, "new_hash": new},
        )
        return old, new

    def stop(self, grace: float = 2.0) -> None:
        for s in self.sessions.all():
            s.close("coordinator shutting down")
        for srv in (self.server, self.enrol_server):
            if srv is not None:
                srv.stop(grace).wait(grace + 1)
        self.jobs.stop()
        self.witness.stop()
        self.metrics_server.close()
        self.revocation.stop()
        self.audit_log.close()  # final checkpoint on shutdown
        self.store.close()
