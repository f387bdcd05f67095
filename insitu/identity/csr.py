"""Strict validation of certificate signing requests received from the network."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.errors import ErrorCode, InsituError

__all__ = ["MAX_CSR_BYTES", "validate_csr"]

MAX_CSR_BYTES = 8192


def validate_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: PEM, self-signature valid, EC P-256 or P-384 key.

    Raises MALFORMED_CSR with a reason that never echoes the CSR contents.
    """
    if not isinstance(csr_pem, str) or not csr_pem.strip():
        raise InsituError(ErrorCode.MALFORMED_CSR, "csr_pem is empty")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InsituError(ErrorCode.MALFORMED_CSR, f"csr_pem exceeds {MAX_CSR_BYTES} bytes")
    if "PRIVATE KEY" in csr_pem:
        # Someone pasted a key where a CSR belongs: refuse without touching it further.
        raise InsituError(ErrorCode.MALFORMED_CSR, "a private key was sent instead of a CSR")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InsituError(ErrorCode.MALFORMED_CSR, "not a PEM PKCS#10 request") from None
    if not csr.is_signature_valid:
        raise InsituError(ErrorCode.MALFORMED_CSR, "CSR self-signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
    ):
        raise InsituError(ErrorCode.MALFORMED_CSR, "CSR key must be EC P-256 or P-384")
    return csr
