"""Issue #5: a 3-site federated job over the mTLS session stream, end to end, with real
Flower strategies, real torch training in supervised worker processes, every round
audited, and a signed, encrypted model in the registry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from insitu.apps.breast_cancer.data import write_site_csvs
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService
from insitu.sdk import Client
from site_node.approvals import ApprovedCode
from site_node.daemon import SiteDaemon
from site_node.settings import load_site_settings
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for

SITES = ("hospital-a", "hospital-b", "hospital-c")
APP = "insitu.apps.breast_cancer"


@dataclass
class Federation:
    coord: RunningCoordinator
    daemons: dict[str, SiteDaemon]
    threads: dict[str, threading.Thread]
    engineer: Client
    code_sha256: str
    signing_key: bytes


def _user_client(rc: RunningCoordinator, keys: KeyService, name: str, d: Path) -> Client:
    sid = SpiffeId.user(rc.settings.trust_domain, name)
    key = generate_private_key()
    cert = keys.sign_csr("user", build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=3600)
    Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem()).save(d)
    return Client(rc.target, d / "cert.pem", d / "key.pem", d / "ca.pem",
                  server_name=rc.settings.server_name, timeout=30)


@pytest.fixture
def fed(make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
               coordinator_settings: CoordinatorSettings, key_service: KeyService,
               tmp_path: Path) -> Federation:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    csvs = write_site_csvs(tmp_path / "data", SITES, seed=0)
    bundle_hash = code_hash(pack_app(app_from_module(APP)))
    daemons, threads = {}, {}
    for site in SITES:
        s = enrol_site(rc, site, tmp_path / site)
        (s.site_dir / "datasets.toml").write_text(
            f'[datasets.bcw]\npath = "{csvs[site]}"\nformat = "csv"\nlabel = "target"\n'
            'purposes = ["research"]\nepsilon_budget = 10.0\n')
        ApprovedCode(s.site_dir).approve(bundle_hash, "test")
        d = SiteDaemon(load_site_settings(s.site_dir, heartbeat_interval_ms=300,
                                          backoff_initial_s=0.1, backoff_max_s=1.0))
        t = threading.Thread(target=d.run, daemon=True)
        t.start()
        daemons[site], threads[site] = d, t
    with rc.admin() as admin:
        wait_for(lambda: sum(x.connected for x in admin.list_sites()) == 3, what="sites")
        admin.grant_role(f"spiffe://{rc.settings.trust_domain}/user/eve", "ml_engineer",
                         org="acme")
    eng = _user_client(rc, key_service, "eve", tmp_path / "eve")
    fed = Federation(rc, daemons, threads, eng, bundle_hash, key_service.public_key("model-signing"))
    yield fed
    eng.close()
    for d in daemons.values():
        d.stop()
    for t in threads.values():
        t.join(10)


@pytest.mark.slow
def test_three_site_job_runs_and_registers_a_signed_model(fed: Federation) -> None:
    federation = fed
    eng = federation.engineer
    job = eng.submit_job(APP, {s: "bcw" for s in SITES}, rounds=2, model_name="bcw-mlp",
                         run_config={"local-epochs": 1})
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
    store = federation.coord.coordinator.audit_log.store
    records = list(store.entries())
    round_events = [r for r in records if b'"job.round"' in r.data]
    assert len(round_events) == 4  # 2 rounds x (train, evaluate)
    assert all(federation.code_sha256.encode() in r.data for r in round_events)
