"""Which DP the site enforces for a job: the dataset's own, else the job's, else none;
``require_dp`` refuses a job that brings none."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import sandbox_env
from site_node.training.datasets import RegisteredDataset
from site_node.training.dp import DpPolicy
from site_node.training.jobs import site_dp_policy


def _ds(**kw: object) -> RegisteredDataset:
    return RegisteredDataset("bcw", Path("/d.csv"), "csv", "y", ("research",), 8.0, **kw)  # type: ignore[arg-type]


NONE = session_pb2.DpSettings()
JOB = session_pb2.DpSettings(noise_multiplier=0.8, max_grad_norm=2.0, delta=1e-6)


def test_the_datasets_own_dp_wins_over_the_jobs() -> None:
    own = DpPolicy(1.0, 1.1, 1e-5)
    assert site_dp_policy(_ds(dp=own), JOB, "j") is own
    assert site_dp_policy(_ds(dp=own), NONE, "j") is own


def test_the_site_enforces_what_the_job_asked_for() -> None:
    assert site_dp_policy(_ds(), JOB, "j") == DpPolicy(2.0, 0.8, 1e-6)
    assert site_dp_policy(_ds(), NONE, "j") is None


def test_require_dp_refuses_a_job_without_dp() -> None:
    with pytest.raises(InsituError, match="requires DP") as err:
        site_dp_policy(_ds(require_dp=True), NONE, "j")
    assert err.value.code is ErrorCode.PERMISSION_DENIED
    assert site_dp_policy(_ds(require_dp=True), JOB, "j") is not None


def test_worker_environment_is_an_allow_list() -> None:
    env = sandbox_env({"VAULT_TOKEN": "s.secret", "OMP_NUM_THREADS": "2", "HOME": "/root"})
    assert "VAULT_TOKEN" not in env and "HOME" not in env and env["OMP_NUM_THREADS"] == "2"
    assert "LD_LIBRARY_PATH" not in sandbox_env({"LD_LIBRARY_PATH": "/x"})
    assert sandbox_env({"LD_LIBRARY_PATH": "/x"}, gpu=True)["LD_LIBRARY_PATH"] == "/x"
