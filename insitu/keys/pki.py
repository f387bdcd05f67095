"""Pure PKI helpers: certificate serial formats, PEM chains, and verified CRL parsing.

Vault names a certificate serial in colon-separated lowercase hex ("3a:1f:..."); X.509
and ``cryptography`` use integers. These helpers convert between the two and turn a CRL
into a set of revoked serials only after its signature checks out.

Example::

    assert serial_to_vault(0x3A1F) == "3a:1f"
    assert serial_from_vault("3a:1f") == 0x3A1F
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "IssuedCert",
    "crl_pem_to_der",
    "is_self_signed",
    "pem_certificates",
    "serial_from_vault",
    "serial_to_vault",
    "verified_revoked_serials",
]

_VAULT_SERIAL = re.compile(r"^[0-9a-f]{2}(?:[:-][0-9a-f]{2})*$")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate Vault signed.

    ``chain_pem`` holds the issuing CA certificate(s), leaf side first, without the root:
    a TLS server presents ``cert_pem + chain_pem``; peers trust the root.
    """

    cert_pem: str
    chain_pem: str
    serial: int
    not_after: datetime

    def __post_init__(self) -> None:
        if self.not_after.tzinfo is None:
            raise InsituError(ErrorCode.INTERNAL, "IssuedCert.not_after must be timezone-aware")


def serial_to_vault(serial: int) -> str:
    """Vault's spelling of a positive serial: minimal big-endian bytes, colon hex."""
    if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "certificate serial must be a positive int")
    raw = serial.to_bytes((serial.bit_length() + 7) // 8, "big")
    return ":".join(f"{b:02x}" for b in raw)


def serial_from_vault(text: str) -> int:
    """Inverse of :func:`serial_to_vault`; also accepts Vault's dash form ("3a-1f")."""
    norm = text.strip().lower()
    if not _VAULT_SERIAL.fullmatch(norm):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "not a colon-hex certificate serial")
    value = int(norm.replace(":", "").replace("-", ""), 16)
    if value <= 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "certificate serial must be positive")
    return value


def pem_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order."""
    blocks = _PEM_CERT.findall(pem)
    try:
        return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    except ValueError:
        raise InsituError(ErrorCode.INTEGRITY, "malformed certificate in PEM bundle") from None


def is_self_signed(cert: x509.Certificate) -> bool:
    """True for a root: issued by itself and verifiable with its own key."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def crl_pem_to_der(crl_pem: str) -> bytes:
    """DER bytes of a PEM CRL."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem.encode())
    except ValueError:
        raise InsituError(ErrorCode.INTEGRITY, "Vault returned a malformed CRL") from None
    return crl.public_bytes(serialization.Encoding.DER)


def verified_revoked_serials(
    crl_der: bytes, issuer: x509.Certificate
) -> tuple[frozenset[int], datetime | None]:
    """Revoked serials of a CRL whose signature verifies with ``issuer``'s key.

    Returns the serials and the CRL's ``next_update`` (tz-aware UTC, None if absent).
    Raises INTEGRITY when the CRL is malformed, from another issuer, or its signature
    does not verify: an unverified CRL must never be trusted, even for "nothing revoked".
    """
    try:
        crl = x509.load_der_x509_crl(crl_der)
    except ValueError:
        raise InsituError(ErrorCode.INTEGRITY, "malformed CRL") from None
    if crl.issuer != issuer.subject:
        raise InsituError(ErrorCode.INTEGRITY, "CRL issuer is not the issuing CA")
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise InsituError(ErrorCode.INTEGRITY, "issuing CA key type cannot sign CRLs")
    if not crl.is_signature_valid(key):
        raise InsituError(ErrorCode.INTEGRITY, "CRL signature does not verify")
    serials = frozenset(entry.serial_number for entry in crl)
    next_update = crl.next_update_utc
    return serials, next_update.astimezone(UTC) if next_update is not None else None
