"""Issues #7 and #4 end to end: a federated model deployed to sites over their sessions,
verified with the pinned model-signing key, served behind the site's own mTLS API,
authorized locally (inference_client on granted models only), canaried and rolled back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from coordinator.settings import CoordinatorSettings
from insitu.identity.credentials import Credentials
from insitu.keys import KeyService
from insitu.sdk import InsituRpcError, PermissionDenied
from insitu.sdk.site_client import SiteClient
from tests.integration.conftest import RunningCoordinator, wait_for
from tests.integration.federation import APP, SITES, Federation, start_federation, user_client


@pytest.fixture
def served(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Iterator[Federation]:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    fed = start_federation(rc, key_service, tmp_path)
    job = fed.engineer.submit_job(
        APP, {s: "bcw" for s in SITES}, rounds=1, model_name="bcw", run_config={"local-epochs": 1}
    )
    final = list(fed.engineer.watch_job(job.job_id, timeout=300))[-1].snapshot
    assert final.state == 3, final.error
    job2 = fed.engineer.submit_job(
        APP,
        {s: "bcw" for s in SITES},
        rounds=1,
        model_name="bcw",
        run_config={"local-epochs": 2, "seed": 7},
    )
    final2 = list(fed.engineer.watch_job(job2.job_id, timeout=300))[-1].snapshot
    assert final2.state == 3 and final2.model_version == "v2", final2.error
    yield fed
    fed.close()


def _site_client(fed: Federation, keys: KeyService, user: str, site: str, tmp: Path) -> SiteClient:
    c = user_client(fed.coord, keys, user, tmp / user)
    c.close()
    port = json.loads((fed.settings[site].site_dir / "status.json").read_text())["api_port"]
    d = tmp / user
    return SiteClient(
        f"127.0.0.1:{port}",
        d / "cert.pem",
        d / "key.pem",
        d / "ca.pem",
        site_id=site,
        trust_domain=fed.coord.settings.trust_domain,
    )


def _rows(n: int = 8) -> np.ndarray:
    from insitu.apps.breast_cancer.data import site_frames

    frame = site_frames(SITES, seed=0)["hospital-a"]
    return frame.drop(columns=["target"]).to_numpy(np.float32)[:n]


@pytest.mark.slow
def test_deploy_predict_canary_rollback_and_site_rbac(
    served: Federation, key_service: KeyService, tmp_path: Path
) -> None:
    fed = served
    td = fed.coord.settings.trust_domain
    app_id, auditor_id = f"spiffe://{td}/user/ehr-app", f"spiffe://{td}/user/quinn"
    with fed.coord.admin() as admin:
        admin.grant_role(app_id, "inference_client")
        admin.grant_role(auditor_id, "auditor")
        admin.grant_role(f"spiffe://{td}/user/alice", "site_admin", site="hospital-a")
    # Deploying is a site_admin's job at that site only; the owner grants predict access.
    with user_client(fed.coord, key_service, "alice", tmp_path / "alice") as alice:
        status = alice.deploy_model("bcw", "v1", "hospital-a")
        assert status.serving_version == 1
        with pytest.raises(PermissionDenied):
            alice.deploy_model("bcw", "v1", "hospital-b")
    fed.engineer.grant_model("bcw", app_id)
    rows = _rows()
    with _site_client(fed, key_service, "ehr-app", "hospital-a", tmp_path) as app:
        wait_for(lambda: _can_predict(app, rows), timeout=20, what="grant synced to site")
        got = app.predict("bcw", {"features": rows})
        assert got.version == "1"
    # Predictions equal direct ONNX Runtime on the same rows.
    art = fed.engineer.get_model("bcw", "v1", signing_key=fed.signing_key)
    sess = ort.InferenceSession(art.onnx, providers=["CPUExecutionProvider"])
    direct = sess.run(None, {"features": rows})[0]
    np.testing.assert_allclose(got.outputs["logits"], direct, atol=1e-5)
    # An auditor, and a site's own identity, may not predict.
    with (
        _site_client(fed, key_service, "quinn", "hospital-a", tmp_path) as quinn,
        pytest.raises(PermissionDenied),
    ):
        quinn.predict("bcw", {"features": rows})
    site_b = Credentials.load(fed.settings["hospital-b"].tls_dir)
    d = tmp_path / "site-b-creds"
    site_b.save(d)
    port = json.loads((fed.settings["hospital-a"].site_dir / "status.json").read_text())["api_port"]
    with (
        SiteClient(
            f"127.0.0.1:{port}",
            d / "cert.pem",
            d / "key.pem",
            d / "ca.pem",
            site_id="hospital-a",
            trust_domain=td,
        ) as foreign,
        pytest.raises(PermissionDenied),
    ):
        foreign.predict("bcw", {"features": rows})
    # Canary v2 to 10% at hospital-a, then roll back: v1's outputs return.
    with fed.coord.admin() as admin:
        admin.grant_role(f"spiffe://{td}/user/alice", "site_admin", site="hospital-a")
    with user_client(fed.coord, key_service, "alice", tmp_path / "alice2") as alice:
        st = alice.deploy_model("bcw", "v2", "hospital-a", canary_percent=10)
        assert (st.serving_version, st.canary_version) == (1, 2)
        assert st.canary_percent == pytest.approx(10.0)
        st = alice.rollback_model("bcw", "hospital-a")
        assert (st.serving_version, st.canary_version) == (1, 0)
    with _site_client(fed, key_service, "ehr-app", "hospital-a", tmp_path / "again") as app:
        again = app.predict("bcw", {"features": rows})
    assert again.version == "1"
    np.testing.assert_allclose(again.outputs["logits"], direct, atol=1e-5)
    # Every Predict is audited at the site as metadata: caller, model, version, rows.
    log = fed.daemons["hospital-a"].audit_log.store
    outcomes = [
        json.loads(e.data)
        for e in log.entries()
        if e.data and b'"rpc.outcome"' in e.data and b'"predict"' in e.data
    ]
    ok = [r for r in outcomes if r["outcome"] == "success"]
    assert ok and ok[-1]["attrs"]["rows"] == "8" and ok[-1]["attrs"]["model"] == "bcw"
    raw = b"".join(e.data for e in log.entries() if e.data)
    assert str(float(rows[0, 0]))[:6].encode() not in raw


def _can_predict(app: SiteClient, rows: np.ndarray) -> bool:
    try:
        app.predict("bcw", {"features": rows})
        return True
    except InsituRpcError:
        return False
