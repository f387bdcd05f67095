"""The release pipeline: batch + attestation, signing and tamper detection, pseudonym
joins across sites, canaries, and the absence of per-cell Python."""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from insitu.errors import ErrorCode, InsituError
from site_node.data import (
    IDENTIFIER_COLUMNS,
    find_canaries,
    generate_patients,
    generate_transactions,
    plant_canaries,
)
from site_node.deid import (
    DEFAULT_POLICY_DIR,
    Policy,
    Release,
    SignedAttestation,
    apply_policy,
    load_policy,
    prepare_release,
    read_batch,
    sign_attestation,
    verify_attestation,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FINGERPRINT = "sha256:" + "ab" * 32
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return generate_patients(569, seed=3)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_DIR / "breast-cancer-patients.yaml")


def _release(frame: pd.DataFrame, policy: Policy, key: bytes = KEY) -> Release:
    return prepare_release(
        frame,
        policy,
        pseudonym_key=key,
        approver="spiffe://t/user/steward",
        dataset_fingerprint=FINGERPRINT,
        rng=np.random.default_rng(0),
        now=NOW,
    )


@pytest.fixture(scope="module")
def release(patients: pd.DataFrame, policy: Policy) -> Release:
    return _release(patients, policy)


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# -------------------------------------------------------------------------- release


def test_attestation_states_what_was_done(release: Release, policy: Policy) -> None:
    a = release.attestation
    assert a["dataset"] == "breast-cancer-patients"
    assert a["dataset_fingerprint"] == FINGERPRINT
    assert a["policy_hash"] == policy.hash and a["policy_version"] == 1
    assert a["rows_in"] == 569 and a["rows_out"] == release.table.num_rows
    assert a["rows_out"] + a["rows_suppressed"] == 569 and a["rows_suppressed"] > 0
    assert a["k_achieved"] >= a["k_required"] == 5
    assert a["epsilon_charged"] == 0.0
    assert a["approver"] == "spiffe://t/user/steward"
    assert a["purposes"] == ["research.oncology", "fl.training"]
    assert a["created_at"] == "2026-11-21T12:00:00Z"
    assert a["batch_format"] == "arrow-ipc-stream"
    import hashlib

    assert a["batch_sha256"] == hashlib.sha256(release.batch).hexdigest()


def test_batch_holds_only_released_columns(release: Release) -> None:
    table = read_batch(release.batch)
    assert table.equals(release.table)
    for gone in ("patient_name", "birth_date", "email", "phone", "address", "note"):
        assert gone not in table.column_names
    assert set(table.column("zip").to_pylist()) <= {"021", "024", "000"}
    assert all(len(p) == 64 for p in table.column("ssn").to_pylist())
    assert table.column("admission_date").to_pylist()[0] == 2025
    assert table.schema.metadata is None  # no pandas metadata riding along


def test_noise_charges_epsilon_and_is_reported() -> None:
    cards = generate_transactions(2000, seed=5)
    card_policy = load_policy(DEFAULT_POLICY_DIR / "card-transactions.yaml")
    a = _release(cards, card_policy).attestation
    assert a["epsilon_charged"] == pytest.approx(2.0)
    assert a["noise"] == {"amount": {"epsilon": 2.0, "sensitivity": 250.0}}
    assert a["pseudonym_key_id"] is None


def test_k_violation_is_refused_with_sizes(patients: pd.DataFrame, policy: Policy) -> None:
    with pytest.raises(InsituError) as err:
        _release(patients.iloc[:40], policy)
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    assert "sizes: [" in err.value.detail
    for value in patients["zip"].iloc[:40]:
        assert value not in err.value.detail


def test_unmapped_column_is_refused_before_anything_runs(
    patients: pd.DataFrame, policy: Policy
) -> None:
    with pytest.raises(InsituError) as err:
        _release(patients.assign(extra_notes="x"), policy)
    assert err.value.code is ErrorCode.POLICY_INVALID


def test_release_needs_an_approver_and_a_fingerprint(
    patients: pd.DataFrame, policy: Policy
) -> None:
    with pytest.raises(InsituError):
        prepare_release(
            patients,
            policy,
            pseudonym_key=KEY,
            approver="",
            dataset_fingerprint=FINGERPRINT,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(InsituError):
        prepare_release(
            patients,
            policy,
            pseudonym_key=KEY,
            approver="s",
            dataset_fingerprint="md5:abc",
            rng=np.random.default_rng(0),
        )


# --------------------------------------------------------------------- pseudonyms


def test_pseudonyms_join_across_sites_with_one_key(patients: pd.DataFrame, policy: Policy) -> None:
    # Two sites hold overlapping patients (rows 200-369 at both), in different orders.
    site_a = patients.iloc[:370].reset_index(drop=True)
    site_b = patients.iloc[200:].sample(frac=1, random_state=1).reset_index(drop=True)
    a = _release(site_a, policy).table.to_pandas()
    b = _release(site_b, policy).table.to_pandas()
    joined = a.merge(b, on="ssn", suffixes=("_a", "_b"))
    assert len(joined) > 100
    # The join finds the same people: their clinical features agree.
    assert (joined["mean radius_a"] == joined["mean radius_b"]).all()
    other = _release(site_b, policy, key=OTHER_KEY).table.to_pandas()
    assert a.merge(other, on="ssn").empty
    assert set(b["ssn"]).isdisjoint(set(other["ssn"]))


# ------------------------------------------------------------------- attestations


def test_sign_and_verify(release: Release, signer: Ed25519PrivateKey, policy: Policy) -> None:
    signed = sign_attestation(release.attestation, signer.sign, "release-signing")
    got = verify_attestation(
        signed, _public(signer), batch=release.batch, expected_policy_hash=policy.hash
    )
    assert got == release.attestation
    wire = json.loads(json.dumps(signed.to_json()))
    assert (
        verify_attestation(
            SignedAttestation.from_json(wire), [b"\0" * 32, _public(signer)], batch=release.batch
        )
        == release.attestation
    )


def _tampered_payload(signed: SignedAttestation, **changes: Any) -> SignedAttestation:
    import rfc8785

    doc = signed.unverified_attestation() | changes
    return SignedAttestation(rfc8785.dumps(doc), signed.signature, signed.key_name)


@pytest.mark.parametrize(
    "changes",
    [
        {"rows_out": 1},
        {"k_achieved": 50},
        {"approver": "mallory"},
        {"epsilon_charged": 0.1},
        {"purposes": ["marketing"]},
    ],
)
def test_changed_field_is_detected(
    release: Release, signer: Ed25519PrivateKey, changes: dict[str, Any]
) -> None:
    signed = sign_attestation(release.attestation, signer.sign, "k")
    with pytest.raises(InsituError) as err:
        verify_attestation(
            _tampered_payload(signed, **changes), _public(signer), batch=release.batch
        )
    assert err.value.code is ErrorCode.INTEGRITY


def test_changed_batch_is_detected(release: Release, signer: Ed25519PrivateKey) -> None:
    signed = sign_attestation(release.attestation, signer.sign, "k")
    flipped = bytearray(release.batch)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(InsituError) as err:
        verify_attestation(signed, _public(signer), batch=bytes(flipped))
    assert err.value.code is ErrorCode.INTEGRITY and "digest mismatch" in err.value.detail


def test_other_key_and_bad_signature_are_refused(
    release: Release, signer: Ed25519PrivateKey
) -> None:
    signed = sign_attestation(release.attestation, signer.sign, "k")
    with pytest.raises(InsituError) as err:
        verify_attestation(signed, _public(Ed25519PrivateKey.generate()), batch=release.batch)
    assert err.value.code is ErrorCode.INTEGRITY
    # Flip a bit: setting the last byte to 0 left it unchanged one time in 256 (a flake).
    broken = SignedAttestation(
        signed.payload, signed.signature[:-1] + bytes([signed.signature[-1] ^ 1]), "k"
    )
    with pytest.raises(InsituError):
        verify_attestation(broken, _public(signer), batch=release.batch)


def test_stale_policy_hash_is_refused(release: Release, signer: Ed25519PrivateKey) -> None:
    signed = sign_attestation(release.attestation, signer.sign, "k")
    with pytest.raises(InsituError) as err:
        verify_attestation(
            signed, _public(signer), batch=release.batch, expected_policy_hash="sha256:" + "0" * 64
        )
    assert err.value.code is ErrorCode.FAILED_PRECONDITION


def test_non_canonical_payload_is_refused(release: Release, signer: Ed25519PrivateKey) -> None:
    payload = json.dumps(release.attestation, indent=1).encode()
    signed = SignedAttestation(payload, signer.sign(payload), "k")
    with pytest.raises(InsituError) as err:
        verify_attestation(signed, _public(signer), batch=release.batch)
    assert "canonical" in err.value.detail


def test_malformed_wire_form_is_refused() -> None:
    with pytest.raises(InsituError):
        SignedAttestation.from_json({"payload": "***", "signature": "", "key_name": "k"})


# ------------------------------------------------------------------------ canaries


def _all_forms_absent(blob: bytes, canaries: dict[str, list[str]]) -> list[str]:
    return find_canaries(blob, [c for values in canaries.values() for c in values])


def test_no_canary_leaves_in_any_form(policy: Policy, signer: Ed25519PrivateKey) -> None:
    frame = generate_patients(569, seed=11)
    canaries = plant_canaries(frame, IDENTIFIER_COLUMNS["patients"], "LIB", per_column=4)
    # Positive control: the scanner sees canaries in raw, hex and base64 forms.
    raw = frame.to_csv().encode()
    assert len(_all_forms_absent(raw, canaries)) == 4 * len(canaries)
    assert _all_forms_absent(b"xx" + base64.b64encode(b"a" + raw), canaries)
    assert _all_forms_absent(raw.hex().encode(), canaries)

    release = _release(frame, policy)
    signed = sign_attestation(release.attestation, signer.sign, "k")
    leaving = release.batch + json.dumps(signed.to_json()).encode() + signed.payload
    assert _all_forms_absent(leaving, canaries) == []


def test_no_pan_canary_leaves(signer: Ed25519PrivateKey) -> None:
    cards = generate_transactions(3000, seed=2)
    canaries = plant_canaries(cards, IDENTIFIER_COLUMNS["transactions"], "PAN", pan_columns={"pan"})
    card_policy = load_policy(DEFAULT_POLICY_DIR / "card-transactions.yaml")
    release = _release(cards, card_policy)
    assert _all_forms_absent(release.batch, canaries) == []
    # The canary PANs are Luhn-valid, so they were truncated rather than suppressed.
    masked = set(release.table.column("pan").to_pylist())
    for pan in canaries["pan"]:
        assert f"{pan[:6]}{'*' * 9}{pan[-4:]}" in masked


# ------------------------------------------------------------------- vectorization


def _python_work(frame: pd.DataFrame, policy: Policy) -> int:
    """Python function calls, C function calls and Python lines executed while the
    policy is applied (a per-cell loop shows up as lines or calls per row)."""
    events = 0

    def profile(frame_: Any, event: str, arg: Any) -> None:
        nonlocal events
        if event == "c_call":
            events += 1

    def trace(frame_: Any, event: str, arg: Any) -> Any:
        nonlocal events
        events += 1  # "call" and "line" events
        return trace

    sys.setprofile(profile)
    sys.settrace(trace)
    try:
        apply_policy(
            frame, policy, pseudonym_key=KEY, rng=np.random.default_rng(0), reference_year=2026
        )
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    return events


def test_no_per_cell_python(patients: pd.DataFrame, policy: Policy) -> None:
    """Python-level calls must not grow with rows: 10x the rows (same distinct values,
    so the per-distinct-value HMAC does the same work) costs about the same calls."""
    base = patients.iloc[:100]
    small = base.iloc[np.arange(10_000) % 100].reset_index(drop=True)
    large = base.iloc[np.arange(100_000) % 100].reset_index(drop=True)
    _python_work(small, policy)  # warm caches and lazy imports
    work_small = _python_work(small, policy)
    work_large = _python_work(large, policy)
    assert work_large < work_small * 1.05 + 100, (work_small, work_large)
    assert work_large < 100_000


def test_arrow_table_input_gives_the_same_release(patients: pd.DataFrame, policy: Policy) -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(patients, preserve_index=False)
    from_arrow = _release(table, policy)  # type: ignore[arg-type]
    from_pandas = _release(patients, policy)
    assert from_arrow.table.column("ssn").equals(from_pandas.table.column("ssn"))
    assert from_arrow.attestation["rows_out"] == from_pandas.attestation["rows_out"]
    with pytest.raises(InsituError):
        _release(table.drop_columns(["note"]), policy)  # type: ignore[arg-type]
