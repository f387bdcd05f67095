"""A job as the coordinator knows it: every field survives its durable row (and a real
store), every state has the name the store accepts, and the proto shows each site."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordinator.jobs.record import ACTIVE, FINISHED, JobRecord, state_name
from coordinator.jobs.store import FINISHED_STATES, JOB_STATES, SqliteJobStore
from insitu._proto.v1 import jobs_pb2, session_pb2
from insitu.flower.bundle import app_from_module, code_hash, pack_app

BUNDLE = pack_app(app_from_module("insitu.apps.breast_cancer"))
# Fields a row does not carry: the bundle is stored apart, the cancel flag is per process.
_NOT_IN_ROW = {"bundle", "cancel"}

STATE_NAMES = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_AWAITING_APPROVAL: "awaiting_approval",
    jobs_pb2.JOB_STATE_RUNNING: "running",
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_FAILED: "failed",
    jobs_pb2.JOB_STATE_REFUSED: "refused",
    jobs_pb2.JOB_STATE_CANCELLED: "cancelled",
    jobs_pb2.JOB_STATE_INTERRUPTED: "interrupted",
}


def _full_record() -> JobRecord:
    """A job with every field away from its default."""
    return JobRecord(
        job_id="0123456789abcdef",
        owner="spiffe://test.insitu/user/alice",
        code_sha256=code_hash(BUNDLE),
        bundle=BUNDLE,
        targets=[("hospital-a", "bcw"), ("hospital-b", "bcw-2")],
        rounds=5,
        strategy="fedprox",
        run_config={"lr": "0.1", "proximal-mu": "0.01"},
        min_sites=2,
        round_timeout_s=120,
        dp=session_pb2.DpSettings(noise_multiplier=1.1, max_grad_norm=0.5, epsilon=3.0, delta=1e-5),
        purpose="research",
        model_name="bc-model",
        org="acme",
        trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        approvals={
            "hospital-a": (True, "", "sha256:fp-a"),
            "hospital-b": (False, "dataset bcw-2 not registered", ""),
        },
        history=[
            jobs_pb2.RoundSummary(
                round=1,
                phase="train",
                sites_ok=["hospital-a"],
                sites_failed=["hospital-b"],
                site_errors=["hospital-b: timeout"],
                metrics={"loss": 0.5},
                wall_seconds=1.25,
            ),
            jobs_pb2.RoundSummary(
                round=1,
                phase="evaluate",
                sites_ok=["hospital-a"],
                metrics={"accuracy": 0.9},
                wall_seconds=0.5,
            ),
        ],
        current_round=1,
        model_version="v3",
        error="some error",
        fix="some fix",
        run_id=(1 << 62) + 12345,
        epsilon={"hospital-a": 0.75, "hospital-b": 1.5},
        submitted_at=1_700_000_000.25,
        finished_at=1_700_000_100.5,
    )


def _assert_same_job(got: JobRecord, want: JobRecord) -> None:
    for f in dataclasses.fields(JobRecord):
        if f.name not in _NOT_IN_ROW:
            assert getattr(got, f.name) == getattr(want, f.name), f.name


def test_every_field_but_the_bundle_survives_the_row() -> None:
    job = _full_record()
    row = job.to_row()
    back = JobRecord.from_row(row, [h.SerializeToString() for h in job.history])
    _assert_same_job(back, job)
    assert back.bundle == b""  # read from the store only when the job runs again
    assert back.cancel is not job.cancel and not back.cancel.is_set()


def test_the_row_holds_the_request_without_its_bundle() -> None:
    row = _full_record().to_row()
    req = jobs_pb2.SubmitJobRequest.FromString(row.request)
    assert req.app_bundle == b""
    assert req.code_sha256 == code_hash(BUNDLE)
    assert [(t.site_id, t.dataset) for t in req.targets] == [
        ("hospital-a", "bcw"),
        ("hospital-b", "bcw-2"),
    ]
    assert row.state == "succeeded"
    assert (row.owner, row.org, row.model_name) == (
        "spiffe://test.insitu/user/alice",
        "acme",
        "bc-model",
    )


def test_a_job_round_trips_through_a_real_store(tmp_path: Path) -> None:
    job = _full_record()
    store = SqliteJobStore(tmp_path / "jobs.db")
    try:
        store.insert(job.to_row(), job.bundle)
        for h in job.history:
            store.append_round(job.job_id, h.SerializeToString())
        row = store.get(job.job_id)
        assert row is not None
        back = JobRecord.from_row(row, store.rounds(job.job_id))
        assert store.bundle(job.job_id) == BUNDLE
    finally:
        store.close()
    _assert_same_job(back, job)


def test_a_new_job_round_trips_with_its_defaults() -> None:
    req = jobs_pb2.SubmitJobRequest(
        app_bundle=BUNDLE,
        code_sha256=code_hash(BUNDLE),
        rounds=2,
        strategy="fedavg",
        min_sites=1,
        round_timeout_s=60,
        model_name="m",
        purpose="research",
        targets=[jobs_pb2.SiteDataset(site_id="hospital-a", dataset="bcw")],
        dp=session_pb2.DpSettings(noise_multiplier=0.7, epsilon=2.0),
    )
    job = JobRecord.from_request("j", req, "owner", "org", {"traceparent": "x"})
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and job.finished_at is None
    assert 0 <= job.run_id < 1 << 63
    back = JobRecord.from_row(job.to_row(), [])
    _assert_same_job(back, job)
    assert back.dp.noise_multiplier == pytest.approx(0.7)


@pytest.mark.parametrize(("state", "name"), sorted(STATE_NAMES.items()))
def test_state_name(state: int, name: str) -> None:
    assert state_name(state) == name


def test_state_names_cover_every_state_and_match_the_store() -> None:
    every = {v for k, v in jobs_pb2.JobState.items() if k != "JOB_STATE_UNSPECIFIED"}
    assert set(STATE_NAMES) == every
    assert state_name(jobs_pb2.JOB_STATE_UNSPECIFIED) == "unknown"
    assert state_name(999) == "unknown"
    assert {state_name(s) for s in every} == set(JOB_STATES)
    assert {state_name(s) for s in FINISHED} == FINISHED_STATES
    assert every == ACTIVE | FINISHED and not ACTIVE & FINISHED


@pytest.mark.parametrize("state", sorted(STATE_NAMES))
def test_every_state_round_trips(state: int) -> None:
    job = _full_record()
    job.state = state
    assert JobRecord.from_row(job.to_row(), []).state == state


def test_the_proto_shows_every_site_decided_or_not() -> None:
    job = _full_record()
    job.targets.append(("hospital-c", "bcw"))
    p = job.to_proto()
    assert [(a.site_id, a.decided, a.approved, a.reason) for a in p.approvals] == [
        ("hospital-a", True, True, ""),
        ("hospital-b", True, False, "dataset bcw-2 not registered"),
        ("hospital-c", False, False, ""),
    ]
    assert p.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert (p.submitted_unix, p.finished_unix) == (1_700_000_000, 1_700_000_100)
    assert list(p.history) == job.history
    assert (p.model_version, p.error, p.fix, p.strategy) == (
        "v3",
        "some error",
        "some fix",
        "fedprox",
    )
    job.finished_at = None
    assert job.to_proto().finished_unix == 0
