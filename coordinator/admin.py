"""Federation administration handlers: the site registry and revocation."""

from __future__ import annotations

from coordinator.sessions import SessionRegistry
from coordinator.store import CoordinatorStore, SiteRow, now_s
from insitu._proto.v1 import admin_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import validate_name
from insitu.keys import KeyService
from insitu.rpc.revocation import RevocationList

__all__ = ["get_site", "list_sites", "revoke_site", "site_message"]

MAX_REASON = 512


def site_message(
    store: CoordinatorStore, registry: SessionRegistry, row: SiteRow
) -> admin_pb2.Site:
    certs = store.site_certs(row.site_id)
    live = [c for c in certs if not c.revoked]
    latest = max(live, key=lambda c: c.not_after) if live else None
    session = registry.get(row.site_id)
    return admin_pb2.Site(
        site_id=row.site_id,
        spiffe_id=row.spiffe_id,
        status=(
            admin_pb2.SITE_STATUS_ENROLLED
            if row.status == "enrolled"
            else admin_pb2.SITE_STATUS_REVOKED
        ),
        connected=session is not None and not session.closed.is_set(),
        enrolled_unix=row.enrolled_at,
        last_seen_unix=int(session.last_seen) if session else 0,
        cert_serial_hex=latest.serial_hex if latest else "",
        cert_not_after_unix=latest.not_after if latest else 0,
        session_id=session.session_id if session else "",
    )


def list_sites(store: CoordinatorStore, registry: SessionRegistry) -> list[admin_pb2.Site]:
    return [site_message(store, registry, r) for r in store.list_sites()]


def get_site(store: CoordinatorStore, registry: SessionRegistry, site_id: str) -> admin_pb2.Site:
    validate_name(site_id, "site_id")
    row = store.get_site(site_id)
    if row is None:
        raise InsituError(ErrorCode.NOT_FOUND, f"site {site_id} is not enrolled")
    return site_message(store, registry, row)


def revoke_site(
    store: CoordinatorStore,
    registry: SessionRegistry,
    keys: KeyService,
    revocation: RevocationList,
    site_id: str,
    reason: str,
) -> tuple[admin_pb2.Site, int]:
    """Revoke every live certificate of the site in Vault and end its sessions."""
    validate_name(site_id, "site_id")
    if len(reason) > MAX_REASON:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"reason exceeds {MAX_REASON} characters")
    row = store.get_site(site_id)
    if row is None:
        raise InsituError(ErrorCode.NOT_FOUND, f"site {site_id} is not enrolled")
    now = now_s()
    serials = [
        c.serial_hex for c in store.site_certs(site_id) if not c.revoked and c.not_after > now
    ]
    for s in serials:
        keys.revoke(int(s, 16))
    store.mark_revoked(site_id, reason or "revoked by operator", serials, now=now)
    for s in serials:
        revocation.add(int(s, 16))
    registry.terminate_site(site_id, "site revoked", ErrorCode.SITE_REVOKED.value)
    updated = store.get_site(site_id)
    assert updated is not None
    return site_message(store, registry, updated), len(serials)
