"""Issue #5: a 3-site federated job over the mTLS session stream, end to end, with real
Flower strategies, real torch training in supervised worker processes, every round
audited, and a signed, encrypted model in the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from insitu.errors import InsituError
from insitu.keys import KeyService
from insitu.sdk import InsituRpcError
from tests.integration.conftest import RunningCoordinator
from tests.integration.federation import APP, SITES, Federation, start_federation


@pytest.fixture
def fed(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Iterator[Federation]:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    f = start_federation(rc, key_service, tmp_path)
    yield f
    f.close()


@pytest.mark.slow
def test_three_site_job_runs_and_registers_a_signed_model(fed: Federation) -> None:
    federation = fed
    eng = federation.engineer
    job = eng.submit_job(
        APP,
        {s: "bcw" for s in SITES},
        rounds=2,
        model_name="bcw-mlp",
        run_config={"local-epochs": 1},
    )
    events = list(eng.watch_job(job.job_id, timeout=300))
    final = events[-1].snapshot
    assert final.state == 3, final.error  # SUCCEEDED
    train_rounds = [e.round for e in events if e.HasField("round") and e.round.phase == "train"]
    assert [r.round for r in train_rounds] == [1, 2]
    assert all(sorted(r.sites_ok) == list(SITES) for r in train_rounds)
    assert final.model_version == "v1"
    art = eng.get_model("bcw-mlp", "v1", signing_key=federation.signing_key)
    assert art.manifest["lineage"]["code_sha256"] == federation.code_sha256
    assert sorted(art.manifest["lineage"]["sites"]) == list(SITES)
    assert art.onnx[:4] != b"" and len(art.state) > 0
    # Every round is in the coordinator's audit log, with the code hash.
    round_events = federation.audit_events("job.round")
    assert len(round_events) == 4  # 2 rounds x (train, evaluate)
    assert all(federation.code_sha256.encode() in r for r in round_events)
    # ...and each site's own log has the messages it processed, with the code hash.
    for site, d in federation.daemons.items():
        msgs = [e.data for e in d.audit_log.store.entries() if e.data and b"job.message" in e.data]
        assert msgs and all(federation.code_sha256.encode() in m for m in msgs), site


@pytest.mark.slow
def test_tampered_model_artifact_fails_verification(fed: Federation) -> None:
    eng = fed.engineer
    job = eng.submit_job(
        APP, {s: "bcw" for s in SITES}, rounds=1, model_name="bcw-t", run_config={"local-epochs": 1}
    )
    final = list(eng.watch_job(job.job_id, timeout=300))[-1].snapshot
    assert final.state == 3, final.error
    vdir = fed.coord.coordinator.registry.root / "bcw-t" / "v1"
    # 1) a manifest edited on disk no longer matches its Vault signature
    manifest = (vdir / "manifest.json").read_bytes()
    (vdir / "manifest.json").write_bytes(manifest.replace(b'"rounds":1', b'"rounds":9'))
    with pytest.raises(InsituRpcError) as e:
        eng.get_model("bcw-t", "v1", signing_key=fed.signing_key)
    assert e.value.code.name == "DATA_LOSS"
    (vdir / "manifest.json").write_bytes(manifest)
    # 2) a flipped ciphertext byte fails AES-GCM authentication
    sealed = json.loads((vdir / "sealed.json").read_text())
    ct = bytearray(bytes.fromhex(sealed["state"]["ciphertext"]))
    ct[10] ^= 1
    sealed["state"]["ciphertext"] = ct.hex()
    (vdir / "sealed.json").write_text(json.dumps(sealed))
    with pytest.raises(InsituError):
        fed.coord.coordinator.registry.load("bcw-t", "v1")
    # 3) the SDK refuses an artifact signed by another key
    with pytest.raises(InsituRpcError):
        eng.get_model("bcw-t", "v1", signing_key=b"\x01" * 32)
