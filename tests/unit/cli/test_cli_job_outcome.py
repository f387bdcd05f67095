"""The engineer sees job states by name, each refusing site's reason with its fix, and a
final line saying what was produced."""

from __future__ import annotations

from insitu._proto.v1 import jobs_pb2
from insitu.cli.progress import job_outcome, state_name


def test_success_names_the_signed_model() -> None:
    job = jobs_pb2.Job(job_id="j1", state=jobs_pb2.JOB_STATE_SUCCEEDED, model_name="bcw",
                       model_version="v3")
    assert job_outcome(job) == ["job j1 succeeded: model bcw v3, signed"]


def test_refusal_names_each_site_its_reason_and_the_fix() -> None:
    job = jobs_pb2.Job(
        job_id="j2", state=jobs_pb2.JOB_STATE_REFUSED, error="0 of 2 sites approved; 2 needed",
        approvals=[
            jobs_pb2.SiteApproval(site_id="hospital-a", decided=True, approved=False,
                                  reason="job code is not approved at this site"),
            jobs_pb2.SiteApproval(site_id="hospital-b", decided=False),
        ],
    )
    lines = job_outcome(job)
    assert lines[0] == "job j2 refused: 0 of 2 sites approved; 2 needed"
    assert "hospital-a: job code is not approved at this site" in lines[1]
    assert "insitu-site approve" in lines[1]
    assert lines[2] == "  hospital-b: did not answer the proposal"
    assert state_name(5) == "refused" and state_name(99) == "state 99"
