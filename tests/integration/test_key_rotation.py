"""Key rotation through Vault transit rewrap: old feature releases and models stay
readable after the wrapping key rotates and every data key is rewrapped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coordinator.features import FeatureIntake
from coordinator.registry import ModelRegistry
from coordinator.store import CoordinatorStore
from insitu.attestation import ATTESTATION_TYPE, sign_attestation
from insitu.audit.signing import LocalSigner
from insitu.errors import InsituError
from insitu.keys import KeyService


class _Jobs:
    trust_domain = "test.insitu"


def test_rotation_and_rewrap_keep_releases_and_models_readable(
    key_service: KeyService, tmp_path: Path
) -> None:
    store = CoordinatorStore(tmp_path / "c.db")
    site = LocalSigner.generate()
    store.pin_attestation_key("hospital-a", site.public_key, now=0)
    intake = FeatureIntake(
        tmp_path / "features",
        key_service,
        store,
        _Jobs(),  # type: ignore[arg-type]
        check=lambda *a: True,
        audit=lambda *a: None,
    )
    batch = b"arrow" * 1000
    att = {
        "type": ATTESTATION_TYPE,
        "dataset": "d",
        "dataset_fingerprint": "sha256:" + "b" * 64,
        "policy_hash": "sha256:" + "a" * 64,
        "policy_version": 1,
        "rows_in": 10,
        "rows_out": 9,
        "k_required": 5,
        "k_achieved": 5,
        "epsilon_charged": 0.0,
        "approver": "x",
        "purposes": ["p"],
        "created_at": "2026-11-21T00:00:00Z",
        "batch_format": "arrow-ipc-stream",
        "batch_sha256": hashlib.sha256(batch).hexdigest(),
    }
    signed = sign_attestation(att, site.sign, "site/hospital-a")
    intake._store(
        "rel1", "hospital-a", "d", "job1", ["p"], att, signed.payload, signed.signature, batch
    )
    registry = ModelRegistry(tmp_path / "models", key_service)
    registry.store("m", b"state-bytes", b"onnx-bytes", {"job_id": "job1"}, "spiffe://x/user/y")
    before = json.loads((tmp_path / "features" / "rel1" / "sealed.json").read_text())
    old_version = key_service.key_version("data-wrapping")
    key_service.rotate("data-wrapping")
    assert key_service.key_version("data-wrapping") == old_version + 1
    assert intake.rewrap_all() == 1 and registry.rewrap_all() == 2
    after = json.loads((tmp_path / "features" / "rel1" / "sealed.json").read_text())
    assert after["wrapped_key"] != before["wrapped_key"]
    assert after["wrapped_key"].startswith(f"vault:v{old_version + 1}:")
    assert intake.read("rel1")[1] == batch
    assert registry.load("m", "v1").state == b"state-bytes"
    # a flipped ciphertext byte is caught by AES-GCM, not silently returned
    after["ciphertext"] = ("0" if after["ciphertext"][0] != "0" else "1") + after["ciphertext"][1:]
    (tmp_path / "features" / "rel1" / "sealed.json").write_text(json.dumps(after))
    with pytest.raises(InsituError):
        intake.read("rel1")
