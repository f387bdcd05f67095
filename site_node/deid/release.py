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

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from insitu.attestation import (
    ATTESTATION_TYPE,
    SignedAttestation,
    sign_attestation,
    verify_attestation,
)
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

BATCH_FORMAT = "arrow-ipc-stream"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Release:
    """A de-identified batch (Arrow IPC stream bytes), its table and its attestation."""

    batch: bytes
    table: pa.Table
    attestation: dict[str, Any]


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


