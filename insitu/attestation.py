"""Release attestations: what a site states about a de-identified feature batch, signed
with the site's Ed25519 key, and verified offline by the coordinator and by anyone
holding the site's pinned public key. Shared by site_node (signing) and the coordinator
(intake), which never import each other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "ATTESTATION_TYPE",
    "SignedAttestation",
    "sign_attestation",
    "verify_attestation",
]

ATTESTATION_TYPE = "insitu.release-attestation/v1"
_REQUIRED = (
    "type",
    "dataset",
    "dataset_fingerprint",
    "policy_hash",
    "policy_version",
    "rows_in",
    "rows_out",
    "k_required",
    "k_achieved",
    "epsilon_charged",
    "approver",
    "purposes",
    "created_at",
    "batch_format",
    "batch_sha256",
)


@dataclass(frozen=True)
class SignedAttestation:
    """An attestation as signed: the exact canonical bytes, the signature and the signing
    key's name. Use :func:`verify_attestation` to get the attestation back."""

    payload: bytes
    signature: bytes
    key_name: str

    def to_json(self) -> dict[str, str]:
        """A JSON-safe wire form."""
        return {
            "payload": base64.b64encode(self.payload).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "key_name": self.key_name,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SignedAttestation:
        try:
            return cls(
                payload=base64.b64decode(doc["payload"], validate=True),
                signature=base64.b64decode(doc["signature"], validate=True),
                key_name=str(doc["key_name"]),
            )
        except (KeyError, TypeError, binascii.Error):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "malformed signed attestation") from None

    def unverified_attestation(self) -> dict[str, Any]:
        """The payload parsed WITHOUT checking the signature (for display and routing)."""
        return _parse_payload(self.payload)


def sign_attestation(
    attestation: Mapping[str, Any], signer: Callable[[bytes], bytes], key_name: str
) -> SignedAttestation:
    """Sign the RFC 8785 canonical bytes of ``attestation`` with ``signer`` (for example
    ``lambda data: keys.sign(key_name, data)``)."""
    payload = _canonical(attestation)
    signature = signer(payload)
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise InsituError(ErrorCode.INTERNAL, "signer did not return a 64-byte Ed25519 signature")
    return SignedAttestation(payload=payload, signature=signature, key_name=key_name)


def verify_attestation(
    signed: SignedAttestation,
    public_key: bytes | Collection[bytes],
    *,
    batch: bytes,
    expected_policy_hash: str | None = None,
) -> dict[str, Any]:
    """Verify offline and return the attestation. Each step has its own error.

    1. The Ed25519 signature over the payload verifies with ``public_key`` (or with one of
       several, e.g. every usable version of a rotated transit key) → else ``INTEGRITY``.
    2. The payload is canonical JSON of an attestation with every field → else
       ``INTEGRITY``.
    3. SHA-256 of ``batch`` equals ``batch_sha256`` → else ``INTEGRITY``.
    4. With ``expected_policy_hash``, the attested policy hash equals it (a stale policy)
       → else ``FAILED_PRECONDITION``.
    """
    keys = [public_key] if isinstance(public_key, bytes | bytearray) else list(public_key)
    if not any(_ed25519_ok(bytes(k), signed.payload, signed.signature) for k in keys):
        raise InsituError(
            ErrorCode.INTEGRITY,
            f"release attestation signature does not verify with key {signed.key_name!r}",
        )
    attestation = _parse_payload(signed.payload)
    if _canonical(attestation) != signed.payload:
        raise InsituError(ErrorCode.INTEGRITY, "release attestation payload is not canonical")
    missing = [f for f in _REQUIRED if f not in attestation]
    if missing or attestation["type"] != ATTESTATION_TYPE:
        raise InsituError(ErrorCode.INTEGRITY, f"release attestation lacks fields {missing}")
    computed = hashlib.sha256(batch).hexdigest()
    if not hmac.compare_digest(computed, str(attestation["batch_sha256"])):
        raise InsituError(
            ErrorCode.INTEGRITY,
            f"batch digest mismatch: attested sha256 {attestation['batch_sha256']}, "
            f"computed {computed}",
        )
    if expected_policy_hash is not None and attestation["policy_hash"] != expected_policy_hash:
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION,
            f"release attests policy {attestation['policy_hash']}, "
            f"current policy is {expected_policy_hash}",
        )
    return attestation


def _ed25519_ok(public_key: bytes, data: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _canonical(attestation: Mapping[str, Any]) -> bytes:
    try:
        return bytes(rfc8785.dumps(dict(attestation)))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"attestation is not canonicalizable ({type(exc).__name__})"
        ) from None


def _parse_payload(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InsituError(ErrorCode.INTEGRITY, "release attestation is not JSON") from None
    if not isinstance(doc, dict):
        raise InsituError(ErrorCode.INTEGRITY, "release attestation is not a JSON object")
    return doc
