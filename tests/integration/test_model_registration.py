"""Issue #12 (right model): the registry stores the strategy's final aggregate, not the
last arrays the coordinator happened to broadcast. With ``fraction-evaluate = 0`` the
final aggregate is never broadcast: the old path registered the initial model."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coordinator.settings import CoordinatorSettings
from insitu.cli.main import app
from insitu.keys import KeyService
from tests.integration.conftest import RunningCoordinator
from tests.integration.federation import HOSTILE, start_app_federation

ROWS = "x1,x2,x3,x4,note\n15.0,25.0,35.0,45.0,a\n1.0,2.0,3.0,4.0,b\n7.5,8.5,9.5,10.5,c\n"


@pytest.mark.slow
def test_with_fraction_evaluate_zero_the_registered_model_is_the_final_aggregate(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> None:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    # Both sites hold the same rows and reply them as weights: FedAvg's aggregate is
    # exactly those rows (no DP on these datasets).
    fed = start_app_federation(rc, key_service, tmp_path, HOSTILE, rows=ROWS)
    try:
        job = fed.engineer.submit_job(
            HOSTILE, {"hospital-a": "records-a", "hospital-b": "records-b"}, rounds=1,
            model_name="final", run_config={"mode": "rows-as-weights", "fraction-evaluate": 0.0},
        )
        final = list(fed.engineer.watch_job(job.job_id, timeout=300))[-1].snapshot
        assert final.state == 3, final.error
        art = fed.engineer.get_model("final", final.model_version, signing_key=fed.signing_key)
        with np.load(io.BytesIO(art.state)) as npz:
            w = npz["w"]
        rows = np.array([[float(v) for v in line.split(",")[:4]]
                         for line in ROWS.splitlines()[1:]], np.float32)
        np.testing.assert_allclose(w, rows.T, rtol=1e-6)
        # The engineer's CLI names the state and what was produced.
        flags = ["--coordinator", rc.target, "--identity", str(tmp_path / "eve"),
                 "--trust-domain", rc.settings.trust_domain]
        listed = CliRunner().invoke(app, ["job", "list", *flags])
        assert listed.exit_code == 0, listed.output
        assert job.job_id in listed.output and "succeeded" in listed.output
        shown = CliRunner().invoke(app, ["job", "show", job.job_id, *flags])
        assert shown.exit_code == 0, shown.output
        assert f"job {job.job_id} succeeded: model final {final.model_version}, signed" in (
            shown.output)
    finally:
        fed.close()
