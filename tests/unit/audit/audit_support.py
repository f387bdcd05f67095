"""Helpers shared by the audit unit tests (imported as a plain module by pytest)."""

from __future__ import annotations

from typing import Any

from insitu.audit.record import Actor, AuditRecord, AuthzInfo, Origin, Resource

ORIGIN = "insitu/test-log"


def make_record(i: int = 0, **overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "event_type": "rpc.request",
        "actor": Actor(
            spiffe_id=f"spiffe://test.insitu/user/u{i % 3}",
            auth_method="mtls",
            cert_fingerprint="ab" * 32,
            role="analyst",
            org="org-a",
            site=None,
        ),
        "action": "/insitu.v1.Coordinator/Heartbeat",
        "resource": Resource("site", f"site-{i}"),
        "outcome": "success",
        "origin": Origin(node="coordinator", peer="ipv4:127.0.0.1:5555"),
        "correlation_id": f"corr-{i}",
        "authz": AuthzInfo("allow", "sha256:" + "0" * 64, ("policy0",)),
    }
    fields.update(overrides)
    return AuditRecord(**fields)
