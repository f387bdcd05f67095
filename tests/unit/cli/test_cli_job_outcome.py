"""The engineer sees job states by name, each refusing site's reason with its fix, and a
final line saying what was produced."""

from __future__ import annotations

from insitu._proto.v1 import jobs_pb2
from insitu.cli.progress import job_outcome, state_name


def test_success_names_the_signed_model() -> None:
    job = jobs_pb2.Job(job_id="j1", state=jobs_pb2.JOB_STATE_SUCCEEDED, model_name="bcw",
                       model_version="v3")
    assert job_outcome(job) == ["job j1 succeeded: model bcw v3, signed"]


def test_refusal_shows_the_coordinators_reason_and_fix_per_site() -> None:
    job = jobs_pb2.Job(
        job_id="j2", state=jobs_pb2.JOB_STATE_REFUSED, error="0 of 2 sites approved; 2 needed",
        fix="hospital-a: job code not approved here (sha256 9440abcdef01…); its site_admin "
            "runs `insitu-site approve`\nhospital-b: did not answer within 60 s",
    )
    lines = job_outcome(job)
    assert lines[0] == "job j2 refused: 0 of 2 sites approved; 2 needed"
    assert lines[1].startswith("  hospital-a: job code not approved here (sha256 9440")
    assert "insitu-site approve" in lines[1]
    assert lines[2] == "  hospital-b: did not answer within 60 s"
    assert state_name(5) == "refused" and state_name(99) == "state 99"
    assert state_name(jobs_pb2.JOB_STATE_QUEUED) == "queued"
    assert state_name(jobs_pb2.JOB_STATE_INTERRUPTED) == "interrupted"
