"""Join tokens and enrolment: a one-time, expiring token plus a CSR becomes a short-lived
site certificate signed by Vault. Renewal reuses the same signing path over mTLS.

Order matters for "state unchanged on bad input": everything is validated read-only
first, then Vault signs, then the token is consumed and the site recorded in one
transaction. If that transaction loses a race, the fresh certificate is revoked.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from coordinator.settings import CoordinatorSettings
from coordinator.store import CoordinatorStore, now_s
from insitu.errors import ErrorCode, InsituError
from insitu.identity.csr import validate_csr
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.keys import IssuedCert, KeyService

__all__ = ["Enrolled", "JoinTokenMinted", "enrol_site", "mint_join_token", "renew_site_cert"]

MIN_TOKEN_TTL_S = 60
TOKEN_PREFIX = "isj_"


@dataclass(frozen=True)
class JoinTokenMinted:
    token: str
    token_id: str
    site_id: str
    expires_at: int

    def __repr__(self) -> str:  # never print the token itself
        return f"JoinTokenMinted(token_id={self.token_id!r}, site_id={self.site_id!r})"


@dataclass(frozen=True)
class Enrolled:
    spiffe_id: SpiffeId
    cert: IssuedCert
    ca_pem: str


def mint_join_token(
    store: CoordinatorStore,
    settings: CoordinatorSettings,
    site_id: str,
    ttl_s: int,
    created_by: str,
) -> JoinTokenMinted:
    validate_name(site_id, "site_id")
    if not MIN_TOKEN_TTL_S <= ttl_s <= settings.token_max_ttl_s:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"ttl_seconds must be between {MIN_TOKEN_TTL_S} and {settings.token_max_ttl_s}",
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = uuid.uuid4().hex[:16]
    now = now_s()
    store.add_token(token, token_id, site_id, created_by, now + ttl_s, now=now)
    return JoinTokenMinted(token, token_id, site_id, now + ttl_s)


def _sign_site(
    keys: KeyService, settings: CoordinatorSettings, sid: SpiffeId, csr_pem: str
) -> IssuedCert:
    return keys.sign_csr(
        "site",
        csr_pem,
        uri_sans=[sid.uri],
        dns_sans=[f"{sid.name}.site.{settings.trust_domain}"],
        common_name=f"{sid.name}.site.{settings.trust_domain}",
        ttl_seconds=settings.site_cert_ttl_s,
    )


def enrol_site(
    store: CoordinatorStore,
    keys: KeyService,
    settings: CoordinatorSettings,
    site_id: str,
    token: str,
    csr_pem: str,
) -> tuple[Enrolled, str]:
    """Enrol ``site_id``; returns the result and the consumed token's id (for audit)."""
    validate_name(site_id, "site_id")
    if not token or len(token) > 256:
        raise InsituError(ErrorCode.TOKEN_UNKNOWN, "join token is missing or malformed")
    validate_csr(csr_pem)
    t = store.check_token(token, site_id, now=now_s())
    sid = SpiffeId.site(settings.trust_domain, site_id)
    cert = _sign_site(keys, settings, sid, csr_pem)
    try:
        store.complete_enrolment(
            token,
            site_id,
            sid.uri,
            f"{cert.serial:x}",
            int(cert.not_after.timestamp()),
            now=now_s(),
        )
    except InsituError:
        keys.revoke(cert.serial)  # lost a race for the token: the cert must not live
        raise
    return Enrolled(sid, cert, keys.ca_bundle_pem()), t.token_id


def renew_site_cert(
    store: CoordinatorStore,
    keys: KeyService,
    settings: CoordinatorSettings,
    site_id: str,
    csr_pem: str,
) -> Enrolled:
    validate_csr(csr_pem)
    site = store.get_site(site_id)
    if site is None:
        raise InsituError(ErrorCode.NOT_FOUND, f"site {site_id} is not enrolled")
    if site.status != "enrolled":
        raise InsituError(ErrorCode.SITE_REVOKED, f"site {site_id} is revoked")
    sid = SpiffeId.site(settings.trust_domain, site_id)
    cert = _sign_site(keys, settings, sid, csr_pem)
    store.record_cert(site_id, f"{cert.serial:x}", int(cert.not_after.timestamp()), now=now_s())
    return Enrolled(sid, cert, keys.ca_bundle_pem())
