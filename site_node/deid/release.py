"""The site's feature release: apply a policy, enforce k, serialize, attest.

:func:`prepare_release` turns a raw frame into an Arrow IPC stream of de-identified
columns plus an attestation dict stating what was done. :func:`sign_attestation` signs
the attestation's RFC 8785 canonical bytes (through Vault transit in production);
:func:`verify_attestation` checks it offline with the Ed25519 public key and checks the
batch bytes against the attested digest. The caller appends the attestation to the
site's audit log; nothing here logs.

Example::

    release = prepare_release(frame, policy, pseudonym_key=key, approver="spiffe://…/steward",
                              dataset_fingerprint=fingerprint, rng=np.random.default_rng())
    signed = sign_attestation(release.attestation, lambda b: keys.sign("release", b), "release")
    attestation = verify_attestation(signed, keys.public_key("release"), batch=release.batch)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.errors import ErrorCode, InsituError
from site_node.deid import transforms
from site_node.deid.kanon import enforce_k_anonymity
from site_node.deid.policy import ColumnRule, Policy

__all__ = [
    "ATTESTATION_TYPE",
    "BATCH_FORMAT",
    "Release",
    "SignedAttestation",
    "apply_policy",
    "prepare_release",
    "read_batch",
    "sign_attestation",
    "verify_attestation",
]

ATTESTATION_TYPE = "insitu.release-attestation/v1"
BATCH_FORMAT = "arrow-ipc-stream"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
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
class Release:
    """A de-identified batch (Arrow IPC stream bytes), its table and its attestation."""

    batch: bytes
    table: pa.Table
    attestation: dict[str, Any]


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


# ------------------------------------------------------------------------- the pipeline


def apply_policy(
    frame: pd.DataFrame | pa.Table,
    policy: Policy,
    *,
    pseudonym_key: bytes,
    rng: np.random.Generator,
    reference_year: int,
) -> tuple[pa.Table, dict[str, int]]:
    """Every column through its rule (dropped columns left out), in data order, and the
    count of malformed values nulled per column (only columns with any)."""
    present = (
        frame.column_names if isinstance(frame, pa.Table) else [str(c) for c in frame.columns]
    )
    policy.check_columns(present)
    # Only released columns are converted: dropped ones never need an Arrow copy.
    kept = [c for c in present if not policy.rule(c).removes_column]
    table = frame.select(kept) if isinstance(frame, pa.Table) else _to_arrow(frame[kept])
    names: list[str] = []
    arrays: list[pa.Array | pa.ChunkedArray] = []
    invalid: dict[str, int] = {}
    for name in table.column_names:
        rule = policy.rule(name)
        column = _apply_rule(rule, table.column(name), pseudonym_key, rng, reference_year)
        names.append(name)
        arrays.append(column.values)
        if column.invalid:
            invalid[name] = column.invalid
    return pa.Table.from_arrays(arrays, names=names), invalid


def prepare_release(
    frame: pd.DataFrame | pa.Table,
    policy: Policy,
    *,
    pseudonym_key: bytes,
    approver: str,
    dataset_fingerprint: str,
    rng: np.random.Generator,
    now: datetime | None = None,
) -> Release:
    """De-identify ``frame`` under ``policy`` and attest it.

    ``dataset_fingerprint`` is ``"sha256:<hex>"`` of the raw dataset file's bytes (see
    :func:`site_node.data.connectors.fingerprint_bytes`). ``rng`` draws the Laplace
    noise. ``now`` fixes the attestation time and the reference year for birth dates.
    Raises ``POLICY_INVALID`` when the columns do not match the policy and
    ``FAILED_PRECONDITION`` when k-anonymity cannot be met within the suppression budget.
    """
    if not approver:
        raise InsituError(ErrorCode.PERMISSION_DENIED, "a release needs an approver")
    if not _FINGERPRINT.match(dataset_fingerprint):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "dataset fingerprint must be sha256:<hex>")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    transformed, invalid = apply_policy(
        frame, policy, pseudonym_key=pseudonym_key, rng=rng, reference_year=now.year
    )
    kanon = enforce_k_anonymity(
        transformed,
        policy.quasi_identifiers,
        k=policy.k,
        max_suppression_fraction=policy.max_suppression_fraction,
    )
    released = (
        transformed
        if kanon.rows_out == kanon.rows_in
        else transformed.filter(pa.array(kanon.keep, pa.bool_()))
    )
    batch = _ipc_bytes(released)
    attestation: dict[str, Any] = {
        "type": ATTESTATION_TYPE,
        "dataset": policy.dataset,
        "dataset_fingerprint": dataset_fingerprint,
        "dataset_fingerprint_scope": "sha256 of the raw dataset file bytes",
        "policy_hash": policy.hash,
        "policy_version": policy.version,
        "rows_in": kanon.rows_in,
        "rows_out": kanon.rows_out,
        "rows_suppressed": kanon.rows_in - kanon.rows_out,
        "quasi_identifiers": list(policy.quasi_identifiers),
        "k_required": policy.k,
        "k_achieved": kanon.k_achieved,
        "epsilon_charged": policy.epsilon,
        "noise": {
            r.name: {
                "epsilon": float(r.params["epsilon"]),
                "sensitivity": float(r.params["clip"][1]) - float(r.params["clip"][0]),
            }
            for r in policy.columns
            if r.action == "noise"
        },
        "invalid_values_nulled": invalid,
        "columns": list(released.column_names),
        "pseudonym_key_id": (
            transforms.pseudonym_key_id(pseudonym_key)
            if any(r.action == "pseudonymize" for r in policy.columns)
            else None
        ),
        "approver": approver,
        "purposes": list(policy.purposes),
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "batch_format": BATCH_FORMAT,
        "batch_sha256": hashlib.sha256(batch).hexdigest(),
    }
    return Release(batch=batch, table=released, attestation=attestation)


def read_batch(batch: bytes) -> pa.Table:
    """The table inside a release batch."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(batch)) as reader:
            return reader.read_all()
    except pa.ArrowException:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "batch is not an Arrow IPC stream") from None


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Column by column: plain numpy columns go over as numpy (NaN stays a float NaN,
    skipping pandas' NaN-to-null scan and copy); everything else through pandas' own
    Arrow conversion (zero-copy for Arrow-backed strings)."""
    arrays = []
    try:
        for name in frame.columns:
            series = frame[name]
            if isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf":
                arrays.append(pa.array(series.to_numpy(copy=False)))
            else:
                arrays.append(pa.array(series, from_pandas=True))
        return pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])
    except (pa.ArrowException, ValueError, TypeError):
        # Arrow's message can quote a cell; name only the failure.
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "data has a column of mixed or unsupported types"
        ) from None


def _apply_rule(
    rule: ColumnRule,
    values: pa.ChunkedArray,
    key: bytes,
    rng: np.random.Generator,
    reference_year: int,
) -> transforms.Column:
    p = rule.params
    try:
        if rule.action == "keep":
            return transforms.Column(values)
        if rule.action == "pseudonymize":
            return transforms.pseudonymize(values, key=key, domain=str(p.get("domain", rule.name)))
        if rule.action == "truncate_pan":
            return transforms.truncate_pan(
                values, keep_first=int(p.get("keep_first", 6)), keep_last=int(p.get("keep_last", 4))
            )
        if rule.action == "noise":
            lo, hi = p["clip"]
            return transforms.laplace_noise(
                values, epsilon=float(p["epsilon"]), clip=(float(lo), float(hi)), rng=rng
            )
        if rule.action == "generalize" and rule.kind == "zip":
            return transforms.zip3(values)
        if rule.action == "generalize" and rule.kind == "age":
            return transforms.age_band(values)
        if rule.action == "generalize" and rule.kind == "date":
            return transforms.date_to_year(
                values, birth=bool(p.get("birth", False)), reference_year=reference_year
            )
    except pa.ArrowException as exc:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"column {rule.name!r}: {rule.action} failed ({type(exc).__name__})",
        ) from None
    raise InsituError(ErrorCode.POLICY_INVALID, f"column {rule.name!r}: no transform for rule")


def _ipc_bytes(table: pa.Table) -> bytes:
    # Measure first (MockOutputStream writes nothing), then write once into a buffer of
    # the exact size: a growing stream would reallocate and copy the batch repeatedly.
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, table.schema) as writer:
        writer.write_table(table)
    buffer = bytearray(mock.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(pa.py_buffer(buffer)), table.schema) as w:
        w.write_table(table)
    return bytes(buffer)


# ------------------------------------------------------------------------- attestations


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
