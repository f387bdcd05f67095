"""The one error root of insitu and the catalog that maps error codes to gRPC status.

Every domain error raised anywhere in insitu, coordinator or site_node is an
:class:`InsituError` carrying an :class:`ErrorCode`. The RPC error layer maps the code
through :data:`CATALOG` to a gRPC status and a *public* message; the ``detail`` a raiser
gives is shown to the client only when the code is marked ``detail_public``. Details must
never contain keys, tokens, PAN or PHI (they may reach clients and logs).

Example::

    from insitu.errors import ErrorCode, InsituError
    raise InsituError(ErrorCode.TOKEN_EXPIRED, "join token expired at 2026-11-21T10:00:00Z")
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

__all__ = ["CATALOG", "CatalogEntry", "ErrorCode", "InsituError", "catalog_entry"]


class ErrorCode(enum.Enum):
    """Every failure insitu reports, by what went wrong (not by where)."""

    INVALID_ARGUMENT = "invalid_argument"
    MALFORMED_CSR = "malformed_csr"
    TOKEN_UNKNOWN = "token_unknown"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USED = "token_used"
    TOKEN_SITE_MISMATCH = "token_site_mismatch"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    UNAUTHENTICATED = "unauthenticated"
    CERT_REVOKED = "cert_revoked"
    CERT_EXPIRED = "cert_expired"
    PERMISSION_DENIED = "permission_denied"
    SITE_REVOKED = "site_revoked"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    VAULT_UNAVAILABLE = "vault_unavailable"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    POLICY_INVALID = "policy_invalid"
    INTEGRITY = "integrity"
    CONFIG = "config"
    INTERNAL = "internal"


@dataclass(frozen=True)
class CatalogEntry:
    """How one error code looks on the wire."""

    status: grpc.StatusCode
    public_message: str
    detail_public: bool


_S = grpc.StatusCode
CATALOG: dict[ErrorCode, CatalogEntry] = {
    ErrorCode.INVALID_ARGUMENT: CatalogEntry(_S.INVALID_ARGUMENT, "invalid argument", True),
    ErrorCode.MALFORMED_CSR: CatalogEntry(_S.INVALID_ARGUMENT, "malformed CSR", True),
    ErrorCode.TOKEN_UNKNOWN: CatalogEntry(_S.UNAUTHENTICATED, "join token is not valid", False),
    ErrorCode.TOKEN_EXPIRED: CatalogEntry(_S.UNAUTHENTICATED, "join token has expired", False),
    ErrorCode.TOKEN_USED: CatalogEntry(
        _S.UNAUTHENTICATED, "join token has already been used", False
    ),
    ErrorCode.TOKEN_SITE_MISMATCH: CatalogEntry(
        _S.PERMISSION_DENIED, "join token is bound to another site id", False
    ),
    ErrorCode.NOT_FOUND: CatalogEntry(_S.NOT_FOUND, "not found", True),
    ErrorCode.ALREADY_EXISTS: CatalogEntry(_S.ALREADY_EXISTS, "already exists", True),
    ErrorCode.UNAUTHENTICATED: CatalogEntry(_S.UNAUTHENTICATED, "unauthenticated", False),
    ErrorCode.CERT_REVOKED: CatalogEntry(_S.UNAUTHENTICATED, "certificate is revoked", False),
    ErrorCode.CERT_EXPIRED: CatalogEntry(_S.UNAUTHENTICATED, "certificate has expired", False),
    ErrorCode.PERMISSION_DENIED: CatalogEntry(_S.PERMISSION_DENIED, "permission denied", True),
    ErrorCode.SITE_REVOKED: CatalogEntry(_S.PERMISSION_DENIED, "site is revoked", False),
    ErrorCode.FAILED_PRECONDITION: CatalogEntry(
        _S.FAILED_PRECONDITION, "failed precondition", True
    ),
    ErrorCode.RESOURCE_EXHAUSTED: CatalogEntry(_S.RESOURCE_EXHAUSTED, "resource exhausted", True),
    ErrorCode.AUDIT_UNAVAILABLE: CatalogEntry(
        _S.UNAVAILABLE, "audit log unavailable; action refused", False
    ),
    ErrorCode.VAULT_UNAVAILABLE: CatalogEntry(_S.UNAVAILABLE, "key service unavailable", False),
    ErrorCode.UNAVAILABLE: CatalogEntry(_S.UNAVAILABLE, "service unavailable", True),
    ErrorCode.DEADLINE_EXCEEDED: CatalogEntry(_S.DEADLINE_EXCEEDED, "deadline exceeded", True),
    ErrorCode.POLICY_INVALID: CatalogEntry(_S.FAILED_PRECONDITION, "policy is invalid", True),
    ErrorCode.INTEGRITY: CatalogEntry(_S.DATA_LOSS, "integrity check failed", True),
    ErrorCode.CONFIG: CatalogEntry(_S.FAILED_PRECONDITION, "configuration error", True),
    ErrorCode.INTERNAL: CatalogEntry(_S.INTERNAL, "internal error", False),
}


def catalog_entry(code: ErrorCode) -> CatalogEntry:
    """The wire form of ``code``; every code has one (a unit test enforces it)."""
    return CATALOG[code]


class InsituError(Exception):
    """Root of every insitu domain error.

    ``detail`` says what precisely was wrong, for operators (and for clients when the
    code's catalog entry marks the detail public). It must never carry secrets.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, code: ErrorCode | None = None, detail: str = "") -> None:
        if code is not None:
            self.code = code
        self.detail = detail
        super().__init__(f"{self.code.value}: {detail}" if detail else self.code.value)

    def public_message(self) -> str:
        """The text a remote client may see."""
        entry = CATALOG[self.code]
        if entry.detail_public and self.detail:
            return f"{entry.public_message}: {self.detail}"
        return entry.public_message
