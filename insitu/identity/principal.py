"""The authenticated caller of an RPC, as authn derives it from the peer certificate.

Handlers read it through :func:`current_principal`; the authn layer sets it per call.

Example::

    p = current_principal()
    if p.spiffe_id.kind is IdentityKind.SITE: ...
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime

from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import IdentityKind, SpiffeId

__all__ = ["Principal", "current_principal", "principal_var"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: SPIFFE id plus the certificate facts audit records need."""

    spiffe_id: SpiffeId
    cert_fingerprint: str  # SHA-256 of the DER certificate, lowercase hex
    cert_serial: int
    not_after: datetime
    auth_method: str = "mtls"
    peer: str = ""

    @property
    def kind(self) -> IdentityKind:
        return self.spiffe_id.kind

    @property
    def name(self) -> str:
        return self.spiffe_id.name


principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "insitu_principal", default=None
)


def current_principal() -> Principal:
    """The principal of the RPC being served; raises UNAUTHENTICATED outside one."""
    p = principal_var.get()
    if p is None:
        raise InsituError(ErrorCode.UNAUTHENTICATED, "no authenticated principal")
    return p
