"""Issue #6 end to end: de-identified features released by data stewards at two sites,
verified and stored encrypted at the coordinator, read by the job's ML engineer and
joined across sites on the SSN pseudonym; and the canary test: unique canaries planted in
every identifier column of every site's raw data never leave a site process, in any
form, through training, release and predict."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

import site_node.session as site_session
from coordinator.settings import CoordinatorSettings
from insitu.authz.bundle import default_policy_dir
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.keys import KeyService
from insitu.sdk import PermissionDenied
from insitu.sdk.site_client import SiteClient
from site_node.approvals import ApprovedCode
from site_node.data.canary import find_canaries, plant_canaries
from site_node.data.synthetic import IDENTIFIER_COLUMNS, generate_patients
from site_node.settings import load_site_settings
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for
from tests.integration.federation import APP, Federation, user_client

SITES = ("hospital-a", "hospital-b")
DATASET = "breast-cancer-patients"
POLICY = default_policy_dir().parent / "deid" / f"{DATASET}.yaml"


class _Capture(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Records every request message a site process sends on its gRPC channels."""

    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def _tap(self, it: Iterator[Any]) -> Iterator[Any]:
        for m in it:
            self.sink.append(m.SerializeToString())
            yield m

    def intercept_unary_unary(self, cont, details, request):  # type: ignore[no-untyped-def]
        self.sink.append(request.SerializeToString())
        return cont(details, request)

    def intercept_unary_stream(self, cont, details, request):  # type: ignore[no-untyped-def]
        self.sink.append(request.SerializeToString())
        return cont(details, request)

    def intercept_stream_unary(self, cont, details, it):  # type: ignore[no-untyped-def]
        return cont(details, self._tap(it))

    def intercept_stream_stream(self, cont, details, it):  # type: ignore[no-untyped-def]
        return cont(details, self._tap(it))


def _site_frames(tmp: Path) -> tuple[dict[str, Path], list[str]]:
    people = generate_patients(569, seed=3)
    shared = people.iloc[:60]  # the same patients visited both hospitals
    parts = {
        "hospital-a": pd.concat([people.iloc[60:320], shared]),
        "hospital-b": pd.concat([people.iloc[320:], shared]),
    }
    canaries: list[str] = []
    paths = {}
    for site, frame in parts.items():
        frame = frame.reset_index(drop=True)
        planted = plant_canaries(
            frame, IDENTIFIER_COLUMNS["patients"], f"CANARY{site[-1].upper()}", per_column=3
        )
        canaries += [c for values in planted.values() for c in values]
        path = tmp / f"{site}.csv"
        frame.to_csv(path, index=False)
        paths[site] = path
    return paths, canaries


@pytest.fixture
def fed(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Federation, list[bytes], list[str]]]:
    captured: list[bytes] = []
    real_channel = site_session.secure_channel

    def tapped(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(real_channel(*args, **kwargs), _Capture(captured))

    monkeypatch.setattr(site_session, "secure_channel", tapped)
    from site_node import site_api

    real_release, real_predict = site_api._SiteApi.ReleaseFeatures, site_api._SiteApi.Predict
    monkeypatch.setattr(
        site_api._SiteApi,
        "ReleaseFeatures",
        lambda self, r, c: _keep(captured, real_release(self, r, c)),
    )
    monkeypatch.setattr(
        site_api._SiteApi, "Predict", lambda self, r, c: _keep(captured, real_predict(self, r, c))
    )

    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    paths, canaries = _site_frames(tmp_path)
    app_hash = code_hash(pack_app(app_from_module(APP)))
    settings = {}
    for site in SITES:
        s = enrol_site(rc, site, tmp_path / site)
        (s.site_dir / "datasets.toml").write_text(
            f'[datasets.{DATASET}]\npath = "{paths[site]}"\nformat = "csv"\nlabel = "target"\n'
            f'purposes = ["research.oncology"]\nepsilon_budget = 10.0\npolicy = "{POLICY}"\n'
        )
        ApprovedCode(s.site_dir).approve(app_hash)
        settings[site] = load_site_settings(
            s.site_dir, heartbeat_interval_ms=300, backoff_initial_s=0.1, backoff_max_s=1.0
        )
    td = rc.settings.trust_domain
    with rc.admin() as admin:
        admin.grant_role(f"spiffe://{td}/user/eve", "ml_engineer", org="acme")
        for site in SITES:
            admin.grant_role(f"spiffe://{td}/user/steward-{site[-1]}", "data_steward", site=site)
            admin.grant_role(f"spiffe://{td}/user/ops", "site_admin", site=site)
        admin.grant_role(f"spiffe://{td}/user/app", "inference_client")
    eng = user_client(rc, key_service, "eve", tmp_path / "eve")
    f = Federation(rc, settings, eng, app_hash, key_service.public_key("model-signing"))
    for site in SITES:
        f.start_site(site)
    with rc.admin() as admin:
        wait_for(lambda: sum(x.connected for x in admin.list_sites()) == 2, what="sites")
    yield f, captured, canaries
    f.close()


def _keep(sink: list[bytes], msg: Any) -> Any:
    sink.append(msg.SerializeToString())
    return msg


def _site_api(fed: Federation, keys: KeyService, user: str, site: str, tmp: Path) -> SiteClient:
    user_client(fed.coord, keys, user, tmp / user).close()
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


@pytest.mark.slow
def test_release_join_and_no_canary_ever_leaves(
    fed: tuple[Federation, list[bytes], list[str]], key_service: KeyService, tmp_path: Path
) -> None:
    f, captured, canaries = fed
    # 1. train on the raw rows, locally (identifier columns are never touched by the app)
    job = f.engineer.submit_job(
        APP,
        {s: DATASET for s in SITES},
        rounds=1,
        model_name="bcwp",
        purpose="research.oncology",
        run_config={"local-epochs": 1},
    )
    final = list(f.engineer.watch_job(job.job_id, timeout=300))[-1].snapshot
    assert final.state == 3, final.error
    # 2. releases: only a data steward of that site may release, and only for that site
    with (
        _site_api(f, key_service, "eve", "hospital-a", tmp_path) as eve_a,
        pytest.raises(PermissionDenied),
    ):
        eve_a.release_features(DATASET, job.job_id)
    with (
        _site_api(f, key_service, "steward-b", "hospital-a", tmp_path) as wrong,
        pytest.raises(PermissionDenied),
    ):
        wrong.release_features(DATASET, job.job_id)
    results = {}
    for site in SITES:
        with _site_api(f, key_service, f"steward-{site[-1]}", site, tmp_path) as steward:
            wait_for(lambda s=steward: _synced(s), timeout=20, what="bindings at site")
            results[site] = steward.release_features(DATASET, job.job_id)
            assert results[site].k_achieved >= 5
    # 3. the job's engineer reads both (attestations verified) and joins on the pseudonym
    infos = f.engineer.list_releases(job.job_id)
    assert sorted(i.site_id for i in infos) == list(SITES)
    tables = {i.site_id: f.engineer.read_release(i.release_id).table().to_pandas() for i in infos}
    a, b = tables["hospital-a"], tables["hospital-b"]
    assert "patient_name" not in a.columns and "ssn" in a.columns
    joined = a.merge(b, on="ssn")
    assert len(joined) >= 30  # shared patients link across sites (some suppressed by k)
    assert all(len(v) == 64 for v in a["ssn"].head())
    # 4. predict at a site with the trained model
    with user_client(f.coord, key_service, "ops", tmp_path / "ops") as ops:
        ops.deploy_model("bcwp", "v1", "hospital-a")
    f.engineer.grant_model("bcwp", f"spiffe://{f.coord.settings.trust_domain}/user/app")
    rows = np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32)
    with _site_api(f, key_service, "app", "hospital-a", tmp_path) as app:
        wait_for(lambda: _can_predict(app, rows), timeout=20, what="grant at site")
    # 5. nothing that left either site carries a canary, raw, hex or base64
    blob = b"".join(captured)
    assert len(blob) > 100_000
    assert find_canaries(blob, canaries) == []
    # ...and the scanner does find them in the raw data (the test can fail)
    raw = b"".join((tmp_path / f"{s}.csv").read_bytes() for s in SITES)
    assert set(find_canaries(raw, canaries)) == set(canaries)


def _synced(steward: SiteClient) -> bool:
    try:
        steward.release_features("no-such-dataset", "x")
    except PermissionDenied:
        return False
    except Exception:
        return True
    return True


def _can_predict(app: SiteClient, rows: np.ndarray) -> bool:
    try:
        app.predict("bcwp", {"features": rows})
        return True
    except Exception:
        return False
