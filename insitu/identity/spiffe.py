"""SPIFFE-style identities: ``spiffe://<trust-domain>/<kind>/<name>``.

Every process and person in a federation is named by one of these, carried as the URI
SAN of its Vault-issued certificate.

Example::

    sid = SpiffeId.parse("spiffe://demo.insitu/site/hospital-a")
    assert sid.kind is IdentityKind.SITE and sid.name == "hospital-a"
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from insitu.errors import ErrorCode, InsituError

__all__ = ["IdentityKind", "SpiffeId", "validate_name", "validate_trust_domain"]

# Names are DNS-label-like so they can also appear in DNS SANs and file names.
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TRUST_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class IdentityKind(enum.Enum):
    """What an identity is; decides which Vault PKI role issues its certificate."""

    SITE = "site"
    USER = "user"
    SERVICE = "service"


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid identity name (lowercase DNS label), else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"{what} must be 1-63 lowercase letters, digits or '-',"
            " not starting or ending with '-'",
        )
    return name


def validate_trust_domain(td: str) -> str:
    """Return ``td`` if it is a valid SPIFFE trust domain (lowercase DNS name), else raise."""
    if not isinstance(td, str) or not _TRUST_DOMAIN.fullmatch(td):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "trust domain must be a lowercase DNS name")
    return td


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A parsed, validated SPIFFE id of one of insitu's three identity kinds."""

    trust_domain: str
    kind: IdentityKind
    name: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_name(self.name, f"{self.kind.value} name")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://td/kind/name`` strictly; anything else raises UNAUTHENTICATED-grade
        INVALID_ARGUMENT."""
        prefix = "spiffe://"
        if not isinstance(uri, str) or not uri.startswith(prefix):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "not a spiffe:// URI")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 3:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "SPIFFE id must be spiffe://td/kind/name")
        td, kind, name = parts
        try:
            k = IdentityKind(kind)
        except ValueError:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"unknown identity kind {kind!r}"
            ) from None
        return cls(td, k, name)

    @classmethod
    def site(cls, trust_domain: str, site_id: str) -> SpiffeId:
        return cls(trust_domain, IdentityKind.SITE, site_id)

    @classmethod
    def user(cls, trust_domain: str, user_id: str) -> SpiffeId:
        return cls(trust_domain, IdentityKind.USER, user_id)

    @classmethod
    def service(cls, trust_domain: str, name: str) -> SpiffeId:
        return cls(trust_domain, IdentityKind.SERVICE, name)

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.kind.value}/{self.name}"

    def __str__(self) -> str:
        return self.uri
