"""The site daemon, assembled: its audit log, datasets, ε ledger, approved code, the
egress guard, job handling, and the session with the coordinator.

The site's audit checkpoints are signed with an Ed25519 key generated here (0600) that
never leaves the site; sites hold no Vault credentials.
"""

from __future__ import annotations

import logging
from pathlib import Path

from insitu.audit import AuditLog, SqliteAuditStore
from insitu.audit.signing import LocalSigner
from insitu.identity.credentials import write_private_file
from insitu.rpc.audit import RpcAuditor
from site_node.approvals import ApprovedCode
from site_node.egress import EgressGuard
from site_node.jobs import SiteJobs
from site_node.session import SiteSession
from site_node.settings import SiteSettings
from site_node.training.datasets import load_datasets
from site_node.training.ledger import open_ledger

__all__ = ["AUDIT_KEY_NAME", "SiteDaemon", "site_audit_signer"]

log = logging.getLogger(__name__)

AUDIT_KEY_FILE = "audit-signing.key"
AUDIT_KEY_NAME = "insitu-site-audit"


def site_audit_signer(site_dir: Path) -> LocalSigner:
    """The site's checkpoint-signing key, created on first use with mode 0600."""
    path = site_dir / AUDIT_KEY_FILE
    if not path.exists():
        signer = LocalSigner.generate()
        tmp = site_dir / f".{AUDIT_KEY_FILE}.new"
        signer.save(tmp)
        data = tmp.read_bytes()
        tmp.unlink()
        write_private_file(path, data)
    return LocalSigner.from_file(path)


class SiteDaemon:
    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        d = settings.site_dir
        signer = site_audit_signer(d)
        self.audit_log = AuditLog(
            SqliteAuditStore(d / "audit.db"), origin=f"{settings.trust_domain}/site/{settings.site_id}",
            node=f"site/{settings.site_id}", signer=signer.sign, key_name=AUDIT_KEY_NAME,
            public_key=signer.public_key,
        )
        self.auditor = RpcAuditor(self.audit_log, f"site/{settings.site_id}")
        self.datasets = load_datasets(d)
        self.ledger = open_ledger(d, self.datasets)
        self.approvals = ApprovedCode(d)
        self.guard = EgressGuard(lambda kind, reason: self.auditor.event(
            "egress.refused", "egress", ("SiteMessage", kind), outcome="denied",
            reason="egress_guard", attrs={"reason": reason[:200]}))
        self.session = SiteSession(settings, self.guard,
                                   on_inbound=lambda m: self.jobs.on_message(m))
        self.jobs = SiteJobs(
            site_dir=d, site_id=settings.site_id, trust_domain=settings.trust_domain,
            datasets=self.datasets, ledger=self.ledger, approvals=self.approvals,
            guard=self.guard, send=self.session.send,
            audit=lambda event, attrs: self.auditor.event(
                event, event, ("Job", attrs.get("job_id", "-")), attrs=attrs),
        )

    def run(self) -> None:
        """Blocking until :meth:`stop`; raises SiteRefused if the federation refuses us."""
        try:
            self.session.run()
        finally:
            self.jobs.close()
            self.ledger.close()
            self.audit_log.close()

    def stop(self) -> None:
        self.session.stop()
