"""Each stream's Hello reports what the daemon says it holds at the moment it is sent, and
status.json lists the jobs with what they hold or wait for."""

from __future__ import annotations

import json
from pathlib import Path

from site_node.session import SOFTWARE_VERSION, SiteSession
from site_node.settings import SiteSettings
from site_node.training.capacity import CapacityBudget, JobCapacity, JobNeed


def _session(tmp_path: Path) -> SiteSession:
    settings = SiteSettings(site_id="hospital-a", trust_domain="t", coordinator="127.0.0.1:1",
                            site_dir=tmp_path)
    return SiteSession(settings, attestation_key=b"a" * 32, audit_key=b"k" * 32)


def test_hello_names_the_jobs_held_when_each_stream_opens(tmp_path: Path) -> None:
    session = _session(tmp_path)
    assert list(session._hello().active_job_ids) == []  # a bare session holds none
    held = ["job-a"]
    session.active_job_ids = lambda: list(held)
    session.witnessed_size = lambda: 9
    first = session._hello()
    held.append("job-b")  # a renewal's Hello says what is held then
    renewal = session._hello(replaces="s-1")
    assert list(first.active_job_ids) == ["job-a"]
    assert list(renewal.active_job_ids) == ["job-a", "job-b"]
    assert renewal.replaces_session_id == "s-1" and renewal.witnessed_size == 9
    assert renewal.site_id == "hospital-a" and renewal.software_version == SOFTWARE_VERSION
    assert renewal.attestation_key == b"a" * 32 and renewal.audit_key == b"k" * 32


def test_status_lists_running_and_queued_jobs(tmp_path: Path) -> None:
    session = _session(tmp_path)
    capacity = JobCapacity(CapacityBudget(1, 4096, (1,)), on_change=session.status_changed)
    session.job_slots = capacity.slots
    capacity.request("a", JobNeed(1024, gpu=True))
    capacity.request("b", JobNeed(2048))
    jobs = json.loads((tmp_path / "status.json").read_text())["jobs"]
    assert jobs == [
        {"job_id": "a", "state": "running", "memory_mb": 1024, "gpu": "1", "queue_position": 0},
        {"job_id": "b", "state": "queued", "memory_mb": 2048, "gpu": "none",
         "queue_position": 1},
    ]
