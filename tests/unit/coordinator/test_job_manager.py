"""The coordinator's job manager: it accepts, persists and queues jobs, runs at most
``max_concurrent_jobs`` at once, asks each job's sites and says why too few approved,
cancels, routes site traffic to the right job, and recovers every job after a restart.

A real SessionRegistry, real (unconnected) Sessions whose outbound queues stand for the
site streams, a real SQLite job store and a real ModelRegistry (whose key service fails
loudly if touched). The ServerApp runner is replaced only where a job must get that far.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode as FlwrErrorCode
from flwr.common.serde import recorddict_to_proto
from flwr.proto.message_pb2 import Metadata as ProtoMetadata

from coordinator.flower_compat import node_id_for, set_task_identity
from coordinator.flower_grid import SessionGrid
from coordinator.jobs import JobManager, JobRecord, JobSettings
from coordinator.jobs.manager import RESTART_ERROR
from coordinator.jobs.record import ACTIVE
from coordinator.jobs.rounds import RoundTracker
from coordinator.jobs.run import job_dir
from coordinator.jobs.store import JobStore, SqliteJobStore
from coordinator.registry import ModelRegistry
from coordinator.serverapp import MAX_LOG_BYTES, ServerAppCancelled
from coordinator.sessions import Session, SessionRegistry
from insitu._proto.v1 import jobs_pb2, session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.chunks import Reassembler, split_message

TD = "test.insitu"
A, B, C = "hospital-a", "hospital-b", "hospital-c"
OWNER = "spiffe://test.insitu/user/alice"
BUNDLE = pack_app(app_from_module("insitu.apps.breast_cancer"))
SHA = code_hash(BUNDLE)

AWAITING = jobs_pb2.JOB_STATE_AWAITING_APPROVAL
QUEUED = jobs_pb2.JOB_STATE_QUEUED
RUNNING = jobs_pb2.JOB_STATE_RUNNING

AuditLog = list[tuple[str, dict[str, Any]]]


def _request(*sites: str, min_sites: int = 1, **kw: Any) -> jobs_pb2.SubmitJobRequest:
    fields: dict[str, Any] = {
        "app_bundle": BUNDLE,
        "code_sha256": SHA,
        "rounds": 3,
        "strategy": "fedavg",
        "min_sites": min_sites,
        "round_timeout_s": 30,
        "model_name": "bc",
        "purpose": "research",
        "targets": [jobs_pb2.SiteDataset(site_id=s, dataset="bcw") for s in sites or (A,)],
    }
    fields.update(kw)
    return jobs_pb2.SubmitJobRequest(**fields)


def _node(site: str) -> int:
    return node_id_for(SpiffeId.site(TD, site).uri)


def _wait_for(cond: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.005)


def _drain(session: Session) -> list[session_pb2.CoordinatorMessage]:
    out = []
    while not session.outbound.empty():
        out.append(session.outbound.get_nowait())
    return out


def _take(session: Session, n: int, timeout: float = 3.0) -> list[session_pb2.CoordinatorMessage]:
    """The next ``n`` messages on the site's stream, waiting for them."""
    deadline = time.monotonic() + timeout
    return [session.outbound.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n)]


def _until(session: Session, kind: str, n: int = 1, timeout: float = 3.0) -> list[Any]:
    """The next ``n`` messages of ``kind`` on the site's stream (others are skipped)."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while len(got) < n:
        msg = session.outbound.get(timeout=max(0.0, deadline - time.monotonic()))
        if msg.WhichOneof("body") == kind:
            got.append(getattr(msg, kind))
    return got


def _settled(m: JobManager, job: JobRecord, state: str) -> None:
    """Wait until ``job`` is in ``state`` in the store too (it is saved after it is set)."""
    _wait_for(
        lambda: (row := m.store.get(job.job_id)) is not None and row.state == state,
        what=f"job {job.job_id} to be {state}",
    )


def _of_kind(msgs: list[session_pb2.CoordinatorMessage], kind: str) -> list[Any]:
    return [getattr(m, kind) for m in msgs if m.WhichOneof("body") == kind]


class _NoKeys:
    """A key service no path of these tests may reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the job manager touched the key service ({name})")


class _Runner:
    """Stands in for JobRunner: builds the job's real SessionGrid on its tracker, hands it
    to the manager, and returns a model version when the test releases it."""

    def __init__(self, sessions: SessionRegistry, max_update_bytes: int) -> None:
        self.sessions = sessions
        self.max_update_bytes = max_update_bytes
        self.attached = threading.Event()
        self.release = threading.Event()
        self.grid: SessionGrid | None = None
        self.approved: list[str] = []

    def run(
        self,
        job: JobRecord,
        approved: list[str],
        tracker: RoundTracker,
        attach: Callable[[SessionGrid], None],
    ) -> str:
        grid = SessionGrid(
            job.job_id,
            {_node(s): s for s in approved},
            self.sessions,
            round_timeout_s=job.round_timeout_s,
            node_wait_s=5,
            max_update_bytes=self.max_update_bytes,
            on_event=tracker.on_event,
        )
        self.grid, self.approved = grid, approved
        attach(grid)
        self.attached.set()
        if not self.release.wait(10) or job.cancel.is_set():
            raise ServerAppCancelled(detail="job cancelled while it ran")
        return "v7"


class Env:
    """One test's coordinator side: sessions, audit log, managers (stopped at teardown)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sessions = SessionRegistry()
        self.audit: AuditLog = []
        self.managers: list[JobManager] = []
        self.runners: list[_Runner] = []

    def connect(self, site: str, site_jobs: frozenset[str] = frozenset()) -> Session:
        return self.sessions.open(
            site, 1, datetime.now(UTC) + timedelta(days=1), site_jobs=site_jobs
        )

    def store(self) -> SqliteJobStore:
        return SqliteJobStore(self.tmp / "jobs.db")

    def manager(self, store: JobStore | None = None, **settings: Any) -> JobManager:
        settings.setdefault("approval_timeout_s", 30.0)
        m = JobManager(
            self.sessions,
            ModelRegistry(self.tmp / "models", _NoKeys()),  # type: ignore[arg-type]
            self.tmp,
            TD,
            lambda kind, attrs: self.audit.append((kind, attrs)),
            JobSettings(**settings),
            store if store is not None else self.store(),
        )
        self.managers.append(m)
        return m

    def runner(self, m: JobManager) -> _Runner:
        r = _Runner(self.sessions, m.settings.max_update_bytes)
        m.runner = r  # type: ignore[assignment]
        self.runners.append(r)
        return r

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [attrs for k, attrs in self.audit if k == kind]

    def close(self) -> None:
        for m in self.managers:
            for job in m.records():
                if job.state in ACTIVE:
                    with contextlib.suppress(InsituError):  # it finished meanwhile
                        m.cancel(job.job_id, "teardown")
        for r in self.runners:
            r.release.set()
        for m in self.managers:
            m.stop()
            for t in m._slots:
                t.join(2)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def _decide(
    m: JobManager,
    session: Session,
    job_id: str,
    approved: bool,
    reason: str = "",
    fingerprint: str = "",
) -> None:
    m.routes["job_decision"](
        session,
        session_pb2.SiteMessage(
            job_decision=session_pb2.JobDecision(
                job_id=job_id, approved=approved, reason=reason, dataset_fingerprint=fingerprint
            )
        ),
    )


def _store_job(
    store: JobStore,
    state: int,
    *,
    job_id: str | None = None,
    sites: tuple[str, ...] = (A,),
    submitted_at: float | None = None,
    **kw: Any,
) -> JobRecord:
    """A job row as an earlier coordinator process left it."""
    job = JobRecord.from_request(
        job_id or uuid.uuid4().hex[:16], _request(*sites), OWNER, "acme", {}
    )
    job.state = state
    if submitted_at is not None:
        job.submitted_at = submitted_at
    for k, v in kw.items():
        setattr(job, k, v)
    store.insert(job.to_row(), BUNDLE)
    return job


# -- submission -------------------------------------------------------------------------


def test_a_submission_is_queued_and_persisted(env: Env) -> None:
    m = env.manager(max_concurrent_jobs=1)
    first = m.submit(_request(A), OWNER)  # takes the only slot
    _wait_for(lambda: first.state == AWAITING)

    job = m.submit(_request(A, B, min_sites=2, run_config={"lr": "0.1"}), OWNER, org="acme")
    assert job.state == QUEUED
    assert m.get(job.job_id) is job
    assert [j.job_id for j in m.records()] == [first.job_id, job.job_id]
    row = m.store.get(job.job_id)
    assert row is not None
    assert (row.state, row.owner, row.org, row.code_sha256, row.model_name) == (
        "queued",
        OWNER,
        "acme",
        SHA,
        "bc",
    )
    assert m.store.bundle(job.job_id) == BUNDLE
    stored = JobRecord.from_row(row, m.store.rounds(job.job_id))
    assert stored.targets == [(A, "bcw"), (B, "bcw")]
    assert (stored.min_sites, stored.run_config, stored.run_id) == (2, {"lr": "0.1"}, job.run_id)
    assert env.events("job.submit")[1] == {
        "job_id": job.job_id,
        "code_sha256": SHA,
        "sites": f"{A},{B}",
    }


def _bad(**kw: Any) -> jobs_pb2.SubmitJobRequest:
    return _request(A, B, **kw)


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(_bad(app_bundle=b""), id="empty bundle"),
        pytest.param(_bad(code_sha256="0" * 64), id="hash mismatch"),
        pytest.param(_bad(targets=[]), id="no targets"),
        pytest.param(
            _bad(targets=[jobs_pb2.SiteDataset(site_id=A, dataset="d")] * 2), id="site twice"
        ),
        pytest.param(
            _bad(targets=[jobs_pb2.SiteDataset(site_id="Hospital A", dataset="d")]),
            id="bad site name",
        ),
        pytest.param(
            _bad(targets=[jobs_pb2.SiteDataset(site_id=A, dataset="../etc")]), id="bad dataset name"
        ),
        pytest.param(_bad(rounds=0), id="no rounds"),
        pytest.param(_bad(rounds=11), id="more rounds than allowed"),
        pytest.param(_bad(strategy="sgd"), id="unknown strategy"),
        pytest.param(_bad(min_sites=3), id="min_sites above targets"),
        pytest.param(_bad(round_timeout_s=0), id="no round timeout"),
        pytest.param(_bad(dp=session_pb2.DpSettings(noise_multiplier=1.0)), id="dp without budget"),
        pytest.param(_bad(dp=session_pb2.DpSettings(delta=float("nan"))), id="dp nan"),
        pytest.param(_bad(model_name="Bad Name"), id="bad model name"),
        pytest.param(_bad(run_config={"num-server-rounds": "9"}), id="run_config rounds"),
    ],
)
def test_an_invalid_submission_stores_nothing(env: Env, req: jobs_pb2.SubmitJobRequest) -> None:
    m = env.manager(max_rounds=10)
    with pytest.raises(InsituError) as err:
        m.submit(req, OWNER)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert m.store.list_jobs() == []
    assert m.records() == []
    assert env.audit == []


# -- approval ---------------------------------------------------------------------------


def test_each_site_gets_its_proposal_even_when_it_connects_late(env: Env) -> None:
    sa, sb = env.connect(A), env.connect(B)
    m = env.manager()
    job = m.submit(_request(A, B, C, min_sites=2), OWNER)
    _settled(m, job, "awaiting_approval")
    proposals = _until(sa, "job_proposal") + _until(sb, "job_proposal")
    sc = env.connect(C)  # while its sites are deciding
    proposals += _until(sc, "job_proposal")
    for index, p in enumerate(proposals):
        assert (p.job_id, p.partition_id, p.num_partitions) == (job.job_id, index, 3)
        assert (p.run_id, p.code_sha256, p.dataset, p.rounds) == (job.run_id, SHA, "bcw", 3)
        assert (p.owner, p.purpose, p.app_bundle) == (OWNER, "research", BUNDLE)


def test_decisions_are_recorded_and_too_few_approvals_refuse_the_job(env: Env) -> None:
    sa, sb, sc = env.connect(A), env.connect(B), env.connect(C)
    m = env.manager()
    job = m.submit(_request(A, B, min_sites=2), OWNER)
    _wait_for(lambda: job.state == AWAITING)
    _decide(m, sa, job.job_id, True, fingerprint="fp-a")
    _decide(m, sa, job.job_id, False, "changed my mind")  # the first decision stands
    _decide(m, sc, job.job_id, True)  # not a target
    _decide(m, sb, "no-such-job", True)
    refusal = f"job code {SHA} not approved at this site"
    _decide(m, sb, job.job_id, False, refusal)
    _settled(m, job, "refused")

    assert job.approvals == {A: (True, "", "fp-a"), B: (False, refusal, "")}
    assert job.error == "1 of 2 sites approved; 2 needed"
    assert job.fix == (
        f"{B}: job code not approved here (sha256 {SHA[:12]}…); its site_admin "
        "reviews the app and runs `insitu-site approve --app-dir APP --by NAME`"
    )
    assert [(d["site"], d["approved"]) for d in env.events("job.site_decision")] == [
        (A, "True"),
        (B, "False"),
    ]
    row = m.store.get(job.job_id)
    assert row is not None and row.state == "refused"
    assert json.loads(row.approvals) == {A: [True, "", "fp-a"], B: [False, refusal, ""]}
    for session in (sa, sb):
        [end] = _until(session, "job_end")
        assert (end.job_id, end.outcome) == (job.job_id, "refused")
    assert sc.outbound.empty()


def test_no_answer_within_the_approval_timeout_refuses_the_job(env: Env) -> None:
    sa = env.connect(A)  # connected but silent; B is not connected at all
    m = env.manager(approval_timeout_s=0.2)
    job = m.submit(_request(A, B, min_sites=1), OWNER)
    _settled(m, job, "refused")
    assert job.error == "0 of 2 sites approved; 1 needed"
    assert job.fix.splitlines() == [
        f"{site}: did not answer within 0.2 s; check that it is connected "
        "(`insitu-site status` there)"
        for site in (A, B)
    ]
    assert job.finished_at is not None
    row = m.store.get(job.job_id)
    assert row is not None
    assert (row.state, row.error, row.fix) == ("refused", job.error, job.fix)
    _wait_for(lambda: bool(env.events("job.end")))
    assert env.events("job.end") == [
        {"job_id": job.job_id, "code_sha256": SHA, "outcome": "refused", "error": job.error}
    ]
    assert [m.WhichOneof("body") for m in _take(sa, 2)] == ["job_proposal", "job_end"]
    assert sa.outbound.empty()


# -- cancel -----------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_at_once(env: Env) -> None:
    sa = env.connect(A)
    m = env.manager(max_concurrent_jobs=1)
    first = m.submit(_request(A), OWNER)
    _wait_for(lambda: first.state == AWAITING)
    queued = m.submit(_request(A), OWNER)

    assert m.cancel(queued.job_id, by=OWNER) is queued
    assert queued.state == jobs_pb2.JOB_STATE_CANCELLED  # at once, not when a slot frees up
    assert queued.error == "job cancelled while queued"
    assert m.store.get(queued.job_id).state == "cancelled"  # type: ignore[union-attr]
    assert env.events("job.cancel") == [{"job_id": queued.job_id, "by": OWNER, "code_sha256": SHA}]
    assert env.events("job.end")[0]["outcome"] == "cancelled"
    assert first.state == AWAITING

    m.cancel(first.job_id, by=OWNER)
    _settled(m, first, "cancelled")
    assert first.error == "job cancelled while sites were deciding"
    # The slot skips the cancelled job and takes the next.
    third = m.submit(_request(A), OWNER)
    _settled(m, third, "awaiting_approval")
    proposed = [p.job_id for p in _until(sa, "job_proposal", 2)]
    assert proposed == [first.job_id, third.job_id]
    assert queued.state == jobs_pb2.JOB_STATE_CANCELLED


def test_cancelling_a_finished_job_is_a_failed_precondition(env: Env) -> None:
    store = env.store()
    done = _store_job(
        store, jobs_pb2.JOB_STATE_SUCCEEDED, finished_at=time.time(), model_version="v1"
    )
    m = env.manager(store=store)
    with pytest.raises(InsituError) as err:
        m.cancel(done.job_id, by=OWNER)
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    assert "already finished (succeeded)" in err.value.detail
    assert m.get(done.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert m.store.get(done.job_id).state == "succeeded"  # type: ignore[union-attr]
    assert env.events("job.cancel") == []
    with pytest.raises(InsituError) as err:
        m.cancel("no-such-job", by=OWNER)
    assert err.value.code is ErrorCode.NOT_FOUND


# -- slots ------------------------------------------------------------------------------


def test_active_jobs_for_a_site(env: Env) -> None:
    store = env.store()
    old = _store_job(store, jobs_pb2.JOB_STATE_FAILED, sites=(A, C), finished_at=time.time())
    m = env.manager(store=store, max_concurrent_jobs=1)
    approving = m.submit(_request(A, B), OWNER)
    _wait_for(lambda: approving.state == AWAITING)
    queued = m.submit(_request(B, C), OWNER)
    assert old.job_id not in m.active_jobs_for(A)
    assert m.active_jobs_for(A) == [approving.job_id]
    assert m.active_jobs_for(B) == sorted([approving.job_id, queued.job_id])
    assert m.active_jobs_for(C) == [queued.job_id]
    assert m.active_jobs_for("hospital-z") == []
    m.cancel(queued.job_id, by=OWNER)
    assert m.active_jobs_for(C) == []
    assert m.active_jobs_for(B) == [approving.job_id]


def test_at_most_max_concurrent_jobs_are_approving_at_once(env: Env) -> None:
    m = env.manager(max_concurrent_jobs=2)
    jobs = [m.submit(_request(A), OWNER) for _ in range(3)]  # A never answers
    most = 0

    def states() -> list[int]:
        nonlocal most
        now = [j.state for j in m.records()]
        most = max(most, now.count(AWAITING))
        return now

    _wait_for(lambda: states().count(AWAITING) == 2)
    time.sleep(0.1)
    assert sorted(states()) == sorted([AWAITING, AWAITING, QUEUED])
    waiting = next(j for j in jobs if j.state == QUEUED)
    assert m.store.get(waiting.job_id).state == "queued"  # type: ignore[union-attr]

    m.cancel(next(j for j in jobs if j.state == AWAITING).job_id, by=OWNER)
    _wait_for(lambda: states() and waiting.state == AWAITING)
    assert states().count(AWAITING) == 2
    assert most == 2


# -- recovery ---------------------------------------------------------------------------


def test_after_a_restart_a_running_job_is_interrupted(env: Env) -> None:
    sa = env.connect(A)
    store = env.store()
    summary = jobs_pb2.RoundSummary(round=1, phase="train", sites_ok=[A])
    running = _store_job(store, RUNNING, current_round=1, approvals={A: (True, "", "fp")})
    store.append_round(running.job_id, summary.SerializeToString())

    m = env.manager(store=store)
    job = m.get(running.job_id)
    assert job.state == jobs_pb2.JOB_STATE_INTERRUPTED
    assert job.error == RESTART_ERROR and "the coordinator stopped" in job.error
    assert job.fix == "submit the job again"
    assert job.finished_at is not None
    assert job.history == [summary] and job.current_round == 1
    assert job.approvals == {A: (True, "", "fp")}
    row = m.store.get(running.job_id)
    assert row is not None
    assert (row.state, row.error, row.fix) == ("interrupted", RESTART_ERROR, "submit the job again")
    assert env.events("job.interrupted") == [
        {"job_id": running.job_id, "reason": "coordinator restart"}
    ]
    assert m.active_jobs_for(A) == []
    time.sleep(0.05)
    assert sa.outbound.empty()  # nothing is asked of its site again


def test_after_a_restart_queued_and_approving_jobs_are_queued_again(env: Env) -> None:
    sa = env.connect(A)
    store = env.store()
    now = time.time()
    approving = _store_job(
        store, AWAITING, submitted_at=now - 2, approvals={A: (True, "", "stale")}
    )
    queued = _store_job(store, QUEUED, submitted_at=now - 1)

    m = env.manager(store=store, max_concurrent_jobs=1)
    first, second = m.get(approving.job_id), m.get(queued.job_id)
    _wait_for(lambda: first.state == AWAITING)
    # The approving job is asked anew, with its bundle read back from the store.
    assert first.approvals == {}
    [p] = _until(sa, "job_proposal")
    assert (p.job_id, p.app_bundle, p.run_id) == (approving.job_id, BUNDLE, approving.run_id)
    # The queued one waits for the slot, queued again, its (empty) approvals kept empty.
    assert second.state == QUEUED and second.bundle == BUNDLE
    row = m.store.get(approving.job_id)
    assert row is not None and json.loads(row.approvals) == {}
    assert m.store.get(queued.job_id).state == "queued"  # type: ignore[union-attr]
    assert env.events("job.interrupted") == []
    m.cancel(first.job_id, by=OWNER)
    _wait_for(lambda: second.state == AWAITING)


def test_after_a_restart_a_finished_job_keeps_its_history(env: Env) -> None:
    store = env.store()
    rounds = [
        jobs_pb2.RoundSummary(round=r, phase=p, sites_ok=[A], metrics={"loss": 1.0 / r})
        for r in (1, 2)
        for p in ("train", "evaluate")
    ]
    done = _store_job(
        store,
        jobs_pb2.JOB_STATE_SUCCEEDED,
        model_version="v4",
        current_round=2,
        finished_at=time.time(),
        epsilon={A: 0.5},
    )
    for r in rounds:
        store.append_round(done.job_id, r.SerializeToString())

    m = env.manager(store=store)
    job = m.get(done.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert (job.model_version, job.current_round, job.epsilon) == ("v4", 2, {A: 0.5})
    assert job.history == rounds
    assert list(job.to_proto().history) == rounds
    assert job.bundle == b""  # never runs again: the bundle stays in the store
    assert m.active_jobs_for(A) == []
    events = list(m.watch(done.job_id, timeout_s=1))
    assert [e.WhichOneof("body") for e in events] == ["snapshot", *["round"] * 4, "snapshot"]
    assert [e.round for e in events[1:-1]] == rounds


def test_after_a_restart_a_release_still_resolves_its_job(env: Env) -> None:
    """ListReleases and ReadRelease authorize each release through its job: before jobs were
    durable, a restart made that NOT_FOUND for everyone."""
    from coordinator.features import release_resource

    store = env.store()
    done = _store_job(store, jobs_pb2.JOB_STATE_SUCCEEDED, finished_at=time.time())
    m = env.manager(store=store)
    job = m.get(done.job_id)
    resource = release_resource(job, A, "bcw", ["research"], True, release_id="r1")
    assert resource.attrs["job"].id == done.job_id
    assert resource.attrs["job"].attrs["owner"].id == "alice"


# -- logs -------------------------------------------------------------------------------


@pytest.fixture
def finished(env: Env) -> tuple[JobManager, str]:
    store = env.store()
    job = _store_job(store, jobs_pb2.JOB_STATE_FAILED, finished_at=time.time())
    return env.manager(store=store), job.job_id


def test_logs_of_an_unknown_job_are_not_found(finished: tuple[JobManager, str]) -> None:
    m, _ = finished
    with pytest.raises(InsituError) as err:
        m.logs("no-such-job")
    assert err.value.code is ErrorCode.NOT_FOUND


def test_logs_of_a_job_without_a_log_are_empty(finished: tuple[JobManager, str]) -> None:
    m, job_id = finished
    assert m.logs(job_id) == (b"", False)
    assert m.logs(job_id, 10) == (b"", False)


def test_logs_tail(env: Env, finished: tuple[JobManager, str]) -> None:
    m, job_id = finished
    log = job_dir(env.tmp, job_id) / "serverapp.log"
    assert log == env.tmp / "jobs" / job_id / "serverapp.log"
    log.parent.mkdir(parents=True)
    text = b"line 1\nline 2\nline 3\n"
    log.write_bytes(text)
    assert m.logs(job_id) == (text, False)
    assert m.logs(job_id, 7) == (b"line 3\n", True)
    assert m.logs(job_id, len(text)) == (text, False)
    assert m.logs(job_id, 10_000) == (text, False)
    with pytest.raises(InsituError) as err:
        m.logs(job_id, -1)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_logs_never_return_more_than_the_log_cap(
    env: Env, finished: tuple[JobManager, str]
) -> None:
    m, job_id = finished
    log = job_dir(env.tmp, job_id) / "serverapp.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"x" * 10 + b"y" * MAX_LOG_BYTES)
    for tail in (0, MAX_LOG_BYTES + 5):
        data, more = m.logs(job_id, tail)
        assert more and data == b"y" * MAX_LOG_BYTES


# -- session traffic ----------------------------------------------------------------------


def _running(
    env: Env, *sites: str, **settings: Any
) -> tuple[JobManager, _Runner, JobRecord, dict[str, Session]]:
    """A job approved by ``sites`` whose (stand-in) ServerApp is running."""
    sessions = {s: env.connect(s) for s in sites}
    m = env.manager(**settings)
    runner = env.runner(m)
    job = m.submit(_request(*sites, min_sites=len(sites)), OWNER)
    _wait_for(lambda: job.state == AWAITING)
    for s, session in sessions.items():
        _decide(m, session, job.job_id, True, fingerprint=f"fp-{s}")
    assert runner.attached.wait(3)
    assert job.state == RUNNING
    for session in sessions.values():
        _drain(session)  # the proposals
    set_task_identity(job.run_id)
    return m, runner, job, sessions


def _train(site: str) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.zeros(4, np.float32))}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    return Message(content, dst_node_id=_node(site), message_type="train")


def _site_answers(
    m: JobManager, site: str, session: Session, job_id: str, *, reply_on: Session | None = None
) -> None:
    """The site reads its instruction off ``session`` and answers, in small chunks, on
    ``reply_on`` (its stream; a renewed one if given)."""
    ra = Reassembler(1 << 30)
    [instruction] = [
        done for c in _of_kind(_drain(session), "task") if (done := ra.add(c)) is not None
    ]
    meta = ProtoMetadata(
        run_id=1,
        message_id=uuid.uuid4().hex,
        src_node_id=_node(site),
        reply_to_message_id=instruction.message_id,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones(4, np.float32))}),
            "metrics": MetricRecord({"num-examples": 10, "loss": 0.5}),
        }
    )
    for chunk in split_message(
        job_id,
        instruction.message_id,
        meta.SerializeToString(),
        recorddict_to_proto(content).SerializeToString(),
        None,
        chunk_bytes=16,
    ):
        m.routes["task_reply"](reply_on or session, session_pb2.SiteMessage(task_reply=chunk))


def test_a_running_job_gets_its_sites_replies_and_its_rounds_are_kept(env: Env) -> None:
    m, runner, job, sessions = _running(env, A, B)
    assert sorted(runner.approved) == [A, B]
    assert m.store.get(job.job_id).state == "running"  # type: ignore[union-attr]
    assert runner.grid is not None
    ids = list(runner.grid.push_messages([_train(A), _train(B)]))
    for site in (A, B):
        _site_answers(m, site, sessions[site], job.job_id)
    replies = list(runner.grid.pull_messages(ids))
    assert len(replies) == 2 and not any(r.has_error() for r in replies)
    [summary] = job.history
    assert (summary.round, summary.phase, sorted(summary.sites_ok)) == (1, "train", [A, B])
    assert m.store.rounds(job.job_id) == [summary.SerializeToString()]
    assert env.events("job.round")[0]["sites_ok"] == ",".join(summary.sites_ok)

    runner.release.set()
    _settled(m, job, "succeeded")
    assert job.model_version == "v7" and job.error == ""
    row = m.store.get(job.job_id)
    assert row is not None and (row.state, row.model_version) == ("succeeded", "v7")
    for session in sessions.values():
        [end] = _until(session, "job_end")
        assert (end.job_id, end.outcome) == (job.job_id, "succeeded")

    # A restart brings the job back with its rounds.
    m.stop()
    again = env.manager(store=env.store())
    back = again.get(job.job_id)
    assert back.state == jobs_pb2.JOB_STATE_SUCCEEDED and back.history == job.history


def test_traffic_for_an_unknown_job_or_from_an_outside_site_is_ignored(env: Env) -> None:
    m, runner, job, sessions = _running(env, A)
    outsider = env.connect(C)
    assert runner.grid is not None
    [mid] = runner.grid.push_messages([_train(A)])
    for session, job_id in ((sessions[A], "no-such-job"), (outsider, job.job_id)):
        chunk = session_pb2.TaskChunk(job_id=job_id, message_id=mid, seq=0, last=True)
        m.routes["task_reply"](session, session_pb2.SiteMessage(task_reply=chunk))
        _decide(m, session, job_id, True)
    assert list(runner.grid.pull_messages([mid])) == []
    assert env.events("job.site_rejoin") == [] and outsider.outbound.empty()
    assert job.state == RUNNING


def test_an_oversized_reply_is_rejected_at_once(env: Env) -> None:
    m, runner, job, sessions = _running(env, A, max_update_bytes=64)
    assert runner.grid is not None
    [mid] = runner.grid.push_messages([_train(A)])
    _site_answers(m, A, sessions[A], job.job_id)
    [reply] = runner.grid.pull_messages([mid])
    assert reply.error.code == FlwrErrorCode.MESSAGE_UNAVAILABLE
    assert reply.error.reason.startswith("update rejected: message of ")
    assert env.events("job.update_rejected")[0]["site"] == A


def test_closing_a_replaced_session_fails_nothing(env: Env) -> None:
    m, runner, job, sessions = _running(env, A)
    assert runner.grid is not None
    [mid] = runner.grid.push_messages([_train(A)])
    renewed = env.connect(A, site_jobs=frozenset({job.job_id}))  # make-before-break
    assert sessions[A].closed.is_set()
    env.sessions.remove(sessions[A])  # the old stream ends
    assert list(runner.grid.pull_messages([mid])) == []
    assert renewed.outbound.empty()  # not asked to approve again
    assert list(runner.grid.get_node_ids()) == [_node(A)]
    # The site answers on its new stream.
    _site_answers(m, A, sessions[A], job.job_id, reply_on=renewed)
    [reply] = runner.grid.pull_messages([mid])
    assert not reply.has_error()


def test_closing_a_site_s_last_session_answers_its_messages(env: Env) -> None:
    m, runner, job, sessions = _running(env, A, B)
    assert runner.grid is not None
    ids = list(runner.grid.push_messages([_train(A), _train(B)]))
    _site_answers(m, A, sessions[A], job.job_id)
    env.sessions.remove(sessions[B])
    by_site = {r.metadata.src_node_id: r for r in runner.grid.pull_messages(ids)}
    assert not by_site[_node(A)].has_error()
    assert by_site[_node(B)].error.code == FlwrErrorCode.NODE_UNAVAILABLE
    [summary] = job.history
    assert (list(summary.sites_ok), list(summary.sites_failed)) == ([A], [B])
    assert list(summary.site_errors) == [f"{B}: site stream closed"]
    assert job.state == RUNNING  # the ServerApp decides what a lost site means


def test_a_site_that_lost_the_job_sits_out_until_it_approves_again(env: Env) -> None:
    m, runner, job, _sessions = _running(env, A, B)
    assert runner.grid is not None
    restarted = env.connect(A)  # its Hello names no job: it restarted
    [p] = _of_kind(_drain(restarted), "job_proposal")
    assert (p.job_id, p.partition_id, p.run_id) == (job.job_id, 0, job.run_id)
    assert list(runner.grid.get_node_ids()) == [_node(B)]
    _decide(m, restarted, job.job_id, True)
    assert sorted(runner.grid.get_node_ids()) == sorted([_node(A), _node(B)])
    assert env.events("job.site_rejoin") == [{"job_id": job.job_id, "site": A, "approved": "True"}]
    assert job.approvals[A] == (True, "", f"fp-{A}")  # the job's record is not rewritten


# -- races --------------------------------------------------------------------------------


class _CancelledJustAfterTheCheck(threading.Event):
    """Makes the job slot's 'cancelled yet?' check answer no, and cancels the job right
    after it: the interleaving of a user's cancel with a slot taking the job."""

    def __init__(self, cancel: Callable[[], object]) -> None:
        super().__init__()
        self._cancel = cancel
        self._armed = True

    def is_set(self) -> bool:
        if self._armed and threading.current_thread().name.startswith("job-slot"):
            self._armed = False
            self._cancel()
            return False
        return super().is_set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_cancel_racing_a_slot_leaves_the_job_cancelled_and_the_slot_alive(env: Env) -> None:
    m = env.manager(max_concurrent_jobs=1)
    first = m.submit(_request(A), OWNER)
    _wait_for(lambda: first.state == AWAITING)
    racing = m.submit(_request(A), OWNER)
    racing.cancel = _CancelledJustAfterTheCheck(lambda: m.cancel(racing.job_id, by=OWNER))
    m.cancel(first.job_id, by=OWNER)
    _wait_for(lambda: m.store.get(racing.job_id).state == "cancelled")  # type: ignore[union-attr]
    later = m.submit(_request(A), OWNER)
    _wait_for(lambda: later.state == AWAITING, timeout=0.5, what="the slot to take a job")
    assert racing.state == jobs_pb2.JOB_STATE_CANCELLED
