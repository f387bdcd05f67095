"""What a site holds and what the coordinator runs agree: the ledger lists open
reservations; the Hello names held jobs; a Welcome reconciles the rest away (worker
stopped, ε released, audited); a re-proposal rejoins without a second worker; a job
beyond the site's budget waits with no worker process until it gets its slot.

Real SiteJobs pieces and real worker processes (unsandboxed here; the integration test
runs them in bubblewrap)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _jobs_support import Site, gpu_app, make_site, wait_for, worker_pids, write_site
from flwr.common.constant import ErrorCode as FlowerErrorCode
from flwr.proto.error_pb2 import Error as ProtoError

from insitu._proto.v1 import session_pb2
from site_node.training.capacity import CapacityBudget, JobSlot
from site_node.training.jobs import RECONCILED_REASON
from site_node.training.ledger import LEDGER_FILE, PrivacyLedger


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    write_site(d)
    return d


@pytest.fixture
def site(site_dir: Path) -> Iterator[Site]:
    s = make_site(site_dir)
    yield s
    s.jobs.close()
    s.ledger.close()


# -- the ledger ------------------------------------------------------------------------

def test_open_reservations_are_those_neither_charged_in_full_nor_released(
    tmp_path: Path,
) -> None:
    with PrivacyLedger(tmp_path / LEDGER_FILE, {"bcw": 10.0, "claims": 10.0}) as ledger:
        assert ledger.open_reservations() == []
        ledger.reserve("bcw", "open", 1.0)
        ledger.reserve("bcw", "partly", 1.0)
        ledger.charge("bcw", "partly", 0.4)
        ledger.reserve("bcw", "spent", 1.0)
        ledger.charge("bcw", "spent", 1.0)
        ledger.reserve("claims", "released", 1.0)
        ledger.release("claims", "released")
        ledger.reserve("claims", "other", 2.0)
        assert ledger.open_reservations() == [("bcw", "open"), ("bcw", "partly"),
                                              ("claims", "other")]
        ledger.release("bcw", "open")
        assert ("bcw", "open") not in ledger.open_reservations()


# -- the Hello -------------------------------------------------------------------------

def test_hello_names_held_jobs_and_open_reservations(site: Site) -> None:
    site.ledger.reserve("records", "crashed-before", 0.5)  # left by a crash
    assert site.propose("job-a").approved
    assert site.jobs.active_job_ids() == ["crashed-before", "job-a"]


# -- a re-proposal ---------------------------------------------------------------------

def test_a_reproposal_rejoins_the_running_job_without_a_second_worker(site: Site) -> None:
    first = site.propose("job-a")
    assert first.approved and first.dataset_fingerprint
    site.reply(site.task("job-a"))
    (pid,) = worker_pids()
    reserved = site.ledger.reserved("records")

    again = site.propose("job-a")
    assert again.approved and again.dataset_fingerprint == first.dataset_fingerprint
    assert "rejoined" in again.reason
    (rejoin,) = site.audited("job.rejoin", "job-a")
    assert rejoin["reason"] == again.reason
    reply = site.reply(site.task("job-a"))
    assert reply.error is None
    assert worker_pids() == [pid]  # the same worker answered; none was added
    assert len(site.audited("job.start", "job-a") + site.audited("job.start_unsandboxed",
                                                                  "job-a")) == 1
    # One reservation, still open, drawn on by both rounds' charges.
    reserves = [e for e in site.ledger.history("records") if e.kind == "reserve"]
    assert len(reserves) == 1 and site.ledger.reserved("records") < reserved


def test_a_reproposal_with_other_code_or_dataset_is_refused_and_the_job_kept(
    site: Site,
) -> None:
    assert site.propose("job-a").approved
    other_dataset = site.propose("job-a", dataset="plain")
    other_code = site.propose("job-a", code_sha256="0" * 64)
    for d in (other_dataset, other_code):
        assert not d.approved and "already runs here" in d.reason
    assert site.reply(site.task("job-a")).error is None  # the held job still runs


# -- the Welcome -----------------------------------------------------------------------

def test_reconcile_stops_jobs_the_welcome_omits_and_releases_their_epsilon(
    site: Site,
) -> None:
    assert site.propose("gone").approved
    assert site.propose("kept", dataset="plain").approved
    site.reply(site.task("gone"))
    site.reply(site.task("kept"))
    assert len(worker_pids()) == 2
    site.ledger.reserve("records", "crashed-before", 0.5)
    open_before = dict(((j, d) for d, j in site.ledger.open_reservations()))
    assert set(open_before) == {"gone", "crashed-before"}

    assert site.jobs.reconcile(["kept"]) == ["gone", "crashed-before"]

    wait_for(lambda: len(worker_pids()) == 1, what="the omitted job's worker to exit")
    assert site.ledger.open_reservations() == []
    released = {e.job_id: e.epsilon for e in site.ledger.history("records")
                if e.kind == "release"}
    assert set(released) == {"gone", "crashed-before"} and released["crashed-before"] == 0.5
    audits = {a["job_id"]: a for a in site.audited("job.reconciled")}
    assert set(audits) == {"gone", "crashed-before"}
    for job_id, a in audits.items():
        assert a["dataset"] == "records" and a["reason"] == RECONCILED_REASON
        assert float(a["released_epsilon"]) == pytest.approx(released[job_id])
    assert site.jobs.active_job_ids() == ["kept"]
    assert site.reply(site.task("kept")).error is None  # the listed job is untouched
    # The omitted job is no longer held: its tasks are ignored, a proposal starts it anew.
    assert site.propose("gone").approved


def test_reconcile_keeps_a_listed_jobs_reservation_after_a_restart(site_dir: Path) -> None:
    first = make_site(site_dir)
    first.ledger.reserve("records", "still-running", 0.5)  # a daemon that died mid-job
    first.ledger.close()
    site = make_site(site_dir)
    try:
        assert site.jobs.reconcile(["still-running"]) == []
        assert site.ledger.open_reservations() == [("records", "still-running")]
        assert site.audited("job.reconciled") == []
    finally:
        site.jobs.close()
        site.ledger.close()


# -- capacity --------------------------------------------------------------------------

def test_a_job_beyond_the_budget_waits_without_a_worker_then_runs(site_dir: Path) -> None:
    site = make_site(site_dir, budget=CapacityBudget(max_jobs=1, total_memory_mb=8192))
    try:
        assert site.propose("first", dataset="plain").reason == "approved"
        second = site.propose("second", dataset="plain")
        assert second.approved and "queued" in second.reason
        assert site.jobs.slots() == [JobSlot("first", "running", 1024, "none"),
                                     JobSlot("second", "queued", 1024, "none", 1)]
        (queued,) = site.audited("job.queued", "second")
        assert "job_max_concurrent=1" in queued["budget"]
        waiting = site.task("second")
        site.reply(site.task("first"))
        assert len(worker_pids()) == 1  # only the running job has a worker process
        assert waiting not in site.replies()
        assert not site.audited("job.start_unsandboxed", "second")

        site.jobs.on_message(_job_end("first"))
        assert site.reply(waiting).error is None  # answered once it got the slot
        assert [s.job_id for s in site.jobs.slots()] == ["second"]
        assert len(site.audited("job.start_unsandboxed", "second")) == 1
    finally:
        site.jobs.close()
        site.ledger.close()


def test_a_job_that_ends_while_queued_answers_its_instructions_with_an_error(
    site_dir: Path,
) -> None:
    site = make_site(site_dir, budget=CapacityBudget(max_jobs=1, total_memory_mb=8192))
    try:
        assert site.propose("first", dataset="plain").approved
        assert site.propose("second", dataset="plain").approved
        waiting = site.task("second")
        site.jobs.on_message(_job_end("second"))
        reply = site.reply(waiting, timeout=10)
        assert reply.error is not None
        assert ProtoError.FromString(reply.error).code == FlowerErrorCode.NODE_UNAVAILABLE
        assert worker_pids() == [] and [s.job_id for s in site.jobs.slots()] == ["first"]
    finally:
        site.jobs.close()
        site.ledger.close()


def test_a_gpu_is_held_by_one_job_at_a_time(site_dir: Path, tmp_path: Path) -> None:
    app = gpu_app(tmp_path, site_dir)
    site = make_site(site_dir, app=app,
                     budget=CapacityBudget(max_jobs=2, total_memory_mb=8192, gpus=(3,)))
    try:
        assert site.propose("a", dataset="plain").reason == "approved"
        assert "queued" in site.propose("b", dataset="plain").reason  # a slot, but no GPU
        (start,) = site.audited("job.start_unsandboxed", "a")
        assert start["gpu"] == "3"
        assert [(s.job_id, s.state, s.gpu) for s in site.jobs.slots()] == [
            ("a", "running", "3"), ("b", "queued", "wanted")]
        site.jobs.on_message(_job_end("a"))
        wait_for(lambda: site.audited("job.start_unsandboxed", "b"), what="b to start")
        assert site.audited("job.start_unsandboxed", "b")[0]["gpu"] == "3"
    finally:
        site.jobs.close()
        site.ledger.close()


def test_a_granted_gpu_whose_device_is_missing_fails_the_job_audibly(
    site_dir: Path, tmp_path: Path
) -> None:
    # Sandboxed: bubblewrap binds /dev/nvidia<N> only for the GPU the job holds; 97 is absent.
    app = gpu_app(tmp_path, site_dir)
    site = make_site(site_dir, app=app, sandboxed=True,
                     budget=CapacityBudget(max_jobs=2, total_memory_mb=8192, gpus=(97,)))
    try:
        assert site.propose("a", dataset="plain").approved
        wait_for(lambda: site.audited("job.start_failed", "a"), what="the failed start")
        assert "/dev/nvidia97" in site.audited("job.start_failed", "a")[0]["reason"]
        reply = site.reply(site.task("a"), timeout=10)
        assert reply.error is not None and worker_pids() == []
    finally:
        site.jobs.close()
        site.ledger.close()


def test_a_job_above_the_whole_budget_is_refused_naming_the_setting(site_dir: Path) -> None:
    site = make_site(site_dir, budget=CapacityBudget(max_jobs=1, total_memory_mb=512))
    try:
        d = site.propose("huge")  # the app asks for 1024 MB
        assert not d.approved and "job_total_memory_mb 512" in d.reason
        assert site.ledger.open_reservations() == []  # its reservation was given back
        assert not (site_dir / "jobs" / "huge").exists()
    finally:
        site.jobs.close()
        site.ledger.close()


def _job_end(job_id: str) -> session_pb2.CoordinatorMessage:
    return session_pb2.CoordinatorMessage(
        job_end=session_pb2.JobEnd(job_id=job_id, outcome="succeeded"))
