"""The site daemon, assembled: its audit log, datasets, ε ledger, approved code, the
egress guard, job handling, and the session with the coordinator.

The site's audit checkpoints are signed with an Ed25519 key generated here (0600) that
never leaves the site; sites hold no Vault credentials.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from insitu._proto.v1 import session_pb2
from insitu.audit import AuditLog, SqliteAuditStore
from insitu.audit.signing import LocalSigner, load_or_create_signer
from insitu.authz import EntityRef, Resource
from insitu.authz.bundle import default_policy_dir
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import Credentials
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.audit import RpcAuditor
from insitu.telemetry.setup import start_observability
from site_node.approvals import ApprovedCode
from site_node.deployments import SiteDeployments, pinned_verifier
from site_node.egress import EgressGuard
from site_node.enrol import pinned_coordinator_audit_key, pinned_model_keys
from site_node.releases import PseudonymHolder, SiteReleases, attestation_signer
from site_node.serving.repository import ModelRepository
from site_node.serving.service import ServingRuntime
from site_node.session import SiteSession
from site_node.settings import SiteSettings
from site_node.site_api import SiteApiServer
from site_node.site_authz import SiteAuthorizer, SiteAuthState
from site_node.training.capacity import JobCapacity
from site_node.training.datasets import load_datasets
from site_node.training.jobs import JobSandboxing, SiteJobs
from site_node.training.ledger import open_ledger
from site_node.witness import SiteWitness

__all__ = ["AUDIT_KEY_NAME", "SiteDaemon", "open_site_audit_log", "site_audit_signer"]

log = logging.getLogger(__name__)

AUDIT_KEY_FILE = "audit-signing.key"
AUDIT_KEY_NAME = "insitu-site-audit"


def site_audit_signer(site_dir: Path) -> LocalSigner:
    """The site's checkpoint-signing key, created on first use with mode 0600."""
    return load_or_create_signer(site_dir / AUDIT_KEY_FILE)


def open_site_audit_log(settings: SiteSettings) -> AuditLog:
    """This site's audit log (``<site-dir>/audit.db``); several processes may append (the
    daemon and ``insitu-site approve``)."""
    signer = site_audit_signer(settings.site_dir)
    return AuditLog(
        SqliteAuditStore(settings.site_dir / "audit.db"),
        origin=f"{settings.trust_domain}/site/{settings.site_id}",
        node=f"site/{settings.site_id}",
        signer=signer.sign,
        key_name=AUDIT_KEY_NAME,
        public_key=signer.public_key,
        checkpoint_every_s=settings.audit_checkpoint_every_s,
    )


def _cert_not_after(tls_dir: Path) -> datetime | None:
    try:
        return Credentials.load(tls_dir).info.not_after
    except InsituError:
        return None


class SiteDaemon:
    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        d = settings.site_dir
        signer = site_audit_signer(d)
        self.audit_log = open_site_audit_log(settings)
        self.auditor = RpcAuditor(self.audit_log, f"site/{settings.site_id}")
        self.datasets = load_datasets(d)
        self.ledger = open_ledger(d, self.datasets)
        self.approvals = ApprovedCode(d)
        self.guard = EgressGuard(
            lambda kind, reason: self.auditor.event(
                "egress.refused",
                "egress",
                ("SiteMessage", kind),
                outcome="denied",
                reason="egress_guard",
                attrs={"reason": reason[:200]},
            ),
            bounds=settings.egress_bounds(),
        )
        self.attestation = attestation_signer(d)
        self.pseudonyms = PseudonymHolder()
        self.session = SiteSession(
            settings,
            self.guard,
            on_inbound=self._on_inbound,
            attestation_key=self.attestation.public_key,
            audit_key=signer.public_key,
        )
        self.witness = SiteWitness(
            d,
            settings.site_id,
            pinned_coordinator_audit_key(d),
            signer,
            self.audit_log,
            self.session.send,
            interval_s=settings.witness_interval_s,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("AuditLog", "coordinator"), outcome="denied", attrs=attrs
            ),
        )
        self.session.witnessed_size = lambda: self.witness.witnessed_size
        self.capacity = JobCapacity(settings.job_capacity(), on_change=self.session.status_changed)
        self.jobs = SiteJobs(
            site_dir=d,
            site_id=settings.site_id,
            trust_domain=settings.trust_domain,
            datasets=self.datasets,
            ledger=self.ledger,
            approvals=self.approvals,
            guard=self.guard,
            send=self.session.send,
            audit=self._job_event,
            sandboxing=JobSandboxing(settings.job_limits(), settings.unsafe_unsandboxed_jobs),
            capacity=self.capacity,
        )
        # The Hello reports the jobs held; each Welcome reconciles them with the coordinator's.
        self.session.active_job_ids = self.jobs.active_job_ids
        self.session.on_welcome = self._reconcile
        self.session.job_slots = self.jobs.slots
        self.session.status.sandbox = (
            "off (unsafe_unsandboxed_jobs)" if settings.unsafe_unsandboxed_jobs else "bubblewrap"
        )
        if settings.unsafe_unsandboxed_jobs:
            self.auditor.event(
                "site.sandbox_disabled", "site.sandbox_disabled", ("Site", settings.site_id),
                attrs={"setting": "unsafe_unsandboxed_jobs"},
            )
        # Inbound session messages by kind; job messages are routed by SiteJobs' own table.
        self._routes: dict[str, Callable[[session_pb2.CoordinatorMessage], None]] = {
            "authz_sync": self._on_authz_sync,
            "model_deploy": lambda m: threading.Thread(
                target=self.deployments.on_deploy, args=(m.model_deploy,), daemon=True
            ).start(),
            "model_control": lambda m: self.deployments.on_control(m.model_control),
            "pseudonym_key": lambda m: self.pseudonyms.set(
                m.pseudonym_key.key_id, m.pseudonym_key.key
            ),
            "feature_ack": lambda m: self.releases.on_ack(m.feature_ack),
            "checkpoint_offer": lambda m: threading.Thread(
                target=self.witness.on_offer, args=(m.checkpoint_offer,), daemon=True
            ).start(),
            **self.jobs.routes,
        }

        self.runtime = ServingRuntime(
            ModelRepository(d / "models"), verifier=pinned_verifier(pinned_model_keys(d))
        )
        self.deployments = SiteDeployments(
            self.runtime,
            pinned_verifier(pinned_model_keys(d)),
            self.session.send,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("Model", attrs.get("model", "-")), attrs=attrs
            ),
        )
        self.authz_state = SiteAuthState()
        self.authorizer = SiteAuthorizer(
            settings.policy_dir or default_policy_dir(),
            settings.local_policy_dir,
            settings.trust_domain,
            self.authz_state,
            settings.site_id,
        )
        self.releases = SiteReleases(
            site_dir=d,
            site_id=settings.site_id,
            datasets=self.datasets,
            ledger=self.ledger,
            signer=self.attestation,
            guard=self.guard,
            pseudonyms=self.pseudonyms,
            send=self.session.send,
            job_dataset=self.jobs.job_dataset,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("FeatureRelease", str(attrs.get("release_id", "-"))), attrs=attrs
            ),
        )
        self.authorizer.release_resource = self._release_resource
        self.api: SiteApiServer | None = None

    def _release_resource(self, dataset: str, job_id: str) -> Resource:
        """The FeatureRelease a data steward approves (Cedar features.approve)."""
        ds = self.datasets.get_dataset(dataset)
        site = self.settings.site_id
        ds_res = Resource(
            "Dataset",
            f"{site}:{dataset}",
            {"site": EntityRef("Site", site), "purposes": set(ds.purposes)},
        )
        job = self.jobs.approved.get(job_id)
        if job is None:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION, f"job {job_id} was not approved at this site"
            )
        owner, purpose, job_ds = job
        job_res = Resource(
            "Job",
            job_id,
            {
                "owner": EntityRef("User", SpiffeId.parse(owner).name),
                "org": EntityRef("Org", "none"),
                "purpose": purpose,
                "approved_datasets": [ds_res] if job_ds == dataset else [],
                "sites": [EntityRef("Site", site)],
            },
        )
        return Resource(
            "FeatureRelease",
            "new",
            {"dataset": ds_res, "site": EntityRef("Site", site), "job": job_res, "approved": False},
        )

    def _job_event(self, event: str, attrs: dict[str, str]) -> None:
        self.auditor.event(event, event, ("Job", attrs.get("job_id", "-")), attrs=attrs)
        if event == "job.start_unsandboxed":
            self.session.status.unsandboxed_job_starts += 1

    def _reconcile(self, welcome: session_pb2.Welcome) -> None:
        self.jobs.reconcile(welcome.active_job_ids)

    def _on_authz_sync(self, msg: session_pb2.CoordinatorMessage) -> None:
        self.authz_state.update(msg.authz_sync)
        if self.api is not None:
            self.api.revocation.refresh()

    def _on_inbound(self, msg: session_pb2.CoordinatorMessage) -> None:
        kind = msg.WhichOneof("body") or ""
        route = self._routes.get(kind)
        if route is None:
            log.warning("coordinator message %r has no route at this site: ignored", kind)
            return
        route(msg)

    def run(self) -> None:
        """Blocking until :meth:`stop`; raises SiteRefused if the federation refuses us."""
        self.runtime.start()
        self.api = SiteApiServer(
            self.settings,
            self.runtime,
            self.authorizer,
            self.authz_state,
            self.auditor,
            self.releases,
        )
        self.api.start()
        self.session.status.api_port = self.api.port
        metrics_server, self.session.status.metrics_port = start_observability(
            f"insitu-site-{self.settings.site_id}", self.settings.metrics_listen,
            self.settings.trace_exporter, self.audit_log,
            lambda: _cert_not_after(self.settings.tls_dir), "site",
            extra_registries=[self.runtime.metrics.registry])
        threading.Thread(target=self.witness.run, name="witness", daemon=True).start()
        try:
            self.session.run()
        finally:
            self.witness.stop()
            metrics_server.close()
            self.api.stop()
            self.runtime.close()
            self.jobs.close()
            self.ledger.close()
            self.audit_log.close()

    def stop(self) -> None:
        self.session.stop()
