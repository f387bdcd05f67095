"""The coordinator's jobs: accept, queue, run up to ``max_concurrent_jobs`` at once (each
with its own run id, SessionGrid and sandboxed ServerApp), route site traffic to the right
job, and keep every job's record, rounds and outcome in the job store.

After a restart, a job that was running is ``interrupted`` (its last global model stays
unsigned in its directory); queued and approving jobs are queued again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.aggregation import install as install_aggregator
from coordinator.flower_grid import SessionGrid
from coordinator.jobs.approval import proposal, refusal_summary
from coordinator.jobs.record import ACTIVE, FINISHED, JobRecord, state_name
from coordinator.jobs.rounds import RoundTracker
from coordinator.jobs.run import JobRunner, job_dir
from coordinator.jobs.settings import JobSettings
from coordinator.jobs.store import JobStore, SqliteJobStore
from coordinator.jobs.submit import validate_submit
from coordinator.registry import ModelRegistry
from coordinator.serverapp import MAX_LOG_BYTES, ServerAppCancelled
from coordinator.sessions import Session, SessionRegistry
from insitu._proto.v1 import jobs_pb2, session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.rpc.chunks import Reassembler
from insitu.telemetry.tracing import extract_from_dict, inject_to_dict, tracer

__all__ = ["JobManager"]

log = logging.getLogger(__name__)

AuditFn = Callable[[str, dict[str, Any]], None]
_OUTCOME: dict[int, str] = {
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_REFUSED: "refused",
    jobs_pb2.JOB_STATE_CANCELLED: "cancelled",
    jobs_pb2.JOB_STATE_INTERRUPTED: "interrupted",
}
RESTART_ERROR = ("the coordinator stopped while the job ran; its last global model is kept "
                 "unsigned in the job's directory (last_aggregate.npz)")


class JobManager:
    def __init__(
        self,
        sessions: SessionRegistry,
        registry: ModelRegistry,
        data_dir: Path,
        trust_domain: str,
        audit: AuditFn,
        settings: JobSettings | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.data_dir = data_dir
        self.trust_domain = trust_domain
        self.audit = audit
        self.settings = settings or JobSettings()
        self.store = store if store is not None else SqliteJobStore(data_dir / "jobs.db")
        self.runner = JobRunner(sessions, registry, data_dir, trust_domain, audit, self.settings)
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Condition()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._grids: dict[str, SessionGrid] = {}  # running job id -> its grid
        self._reassemblers: dict[str, tuple[threading.Lock, Reassembler]] = {}  # by site
        install_aggregator()  # zero-copy weighted aggregation inside flwr's strategies
        self._recover()
        self._slots = [
            threading.Thread(target=self._slot, name=f"job-slot-{i}", daemon=True)
            for i in range(self.settings.max_concurrent_jobs)
        ]
        for t in self._slots:
            t.start()
        sessions.on_change(self._on_session_change)

    def stop(self) -> None:
        for _ in self._slots:
            self._queue.put(None)

    def _recover(self) -> None:
        """Load every stored job: the running ones become interrupted, the queued and
        approving ones are queued again (their sites are asked anew)."""
        for job_id in self.store.interrupt_running(now=time.time(), error=RESTART_ERROR):
            self.audit("job.interrupted", {"job_id": job_id, "reason": "coordinator restart"})
        for row in self.store.list_jobs():
            job = JobRecord.from_row(row, self.store.rounds(row.job_id))
            if job.state in (jobs_pb2.JOB_STATE_INTERRUPTED,) and not job.fix:
                job.fix = "submit the job again"
                self.store.save(job.to_row())
            if job.state in ACTIVE:
                job.state = jobs_pb2.JOB_STATE_QUEUED
                job.approvals = {}
                job.bundle = self.store.bundle(job.job_id)
                self.store.save(job.to_row())
                self._queue.put(job.job_id)
            self._jobs[job.job_id] = job

    # -- API -------------------------------------------------------------------------

    def submit(self, req: jobs_pb2.SubmitJobRequest, owner: str, org: str = "") -> JobRecord:
        validate_submit(req, max_rounds=self.settings.max_rounds)
        job = JobRecord.from_request(uuid.uuid4().hex[:16], req, owner, org, inject_to_dict())
        self.audit(
            "job.submit",
            {"job_id": job.job_id, "code_sha256": job.code_sha256,
             "sites": ",".join(s for s, _ in job.targets)},
        )
        self.store.insert(job.to_row(), job.bundle)
        with self._lock:
            self._jobs[job.job_id] = job
        self._queue.put(job.job_id)
        return job

    def cancel(self, job_id: str, by: str) -> JobRecord:
        """Stop a job that has not finished: a queued or approving job ends at once, a
        running one when its ServerApp is stopped. FAILED_PRECONDITION once finished."""
        job = self.get(job_id)
        with self._lock:
            if job.state in FINISHED:
                raise InsituError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"job {job_id} already finished ({state_name(job.state)}); nothing to cancel",
                )
            job.cancel.set()
            queued = job.state == jobs_pb2.JOB_STATE_QUEUED
            self._lock.notify_all()
        self.audit("job.cancel", {"job_id": job_id, "by": by, "code_sha256": job.code_sha256})
        if queued:
            self._finish(job, jobs_pb2.JOB_STATE_CANCELLED, "job cancelled while queued")
        return job

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise InsituError(ErrorCode.NOT_FOUND, f"job {job_id} not found")
        return job

    def records(self) -> list[JobRecord]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.submitted_at, j.job_id))

    def active_jobs_for(self, site_id: str) -> list[str]:
        """Jobs queued, approving or running with ``site_id`` (a site keeps only these)."""
        with self._lock:
            return sorted(j.job_id for j in self._jobs.values()
                          if j.state in ACTIVE and site_id in dict(j.targets))

    def logs(self, job_id: str, tail_bytes: int = 0) -> tuple[bytes, bool]:
        """The job's ServerApp output (the last ``tail_bytes`` when positive) and whether
        the log holds more than that."""
        self.get(job_id)
        if tail_bytes < 0:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "tail_bytes must be >= 0")
        path = job_dir(self.data_dir, job_id) / "serverapp.log"
        if not path.exists():
            return b"", False
        size = path.stat().st_size
        want = min(tail_bytes or MAX_LOG_BYTES, MAX_LOG_BYTES)
        with path.open("rb") as f:
            f.seek(max(0, size - want))
            return f.read(want), size > want

    def watch(self, job_id: str, timeout_s: float = 3600) -> Iterator[jobs_pb2.JobEvent]:
        job = self.get(job_id)
        yield jobs_pb2.JobEvent(snapshot=job.to_proto())
        sent = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                self._lock.wait_for(
                    lambda sent=sent: len(job.history) > sent  # type: ignore[misc]
                    or job.state not in ACTIVE,
                    1.0,
                )
                new = job.history[sent:]
                done = job.state not in ACTIVE
            for r in new:
                yield jobs_pb2.JobEvent(round=r)
            sent += len(new)
            if done:
                yield jobs_pb2.JobEvent(snapshot=job.to_proto())
                return

    # -- session traffic ---------------------------------------------------------------

    @property
    def routes(self) -> dict[str, Callable[[Session, session_pb2.SiteMessage], None]]:
        """Site message kind -> handler, for the coordinator's routing table."""
        return {"job_decision": self._on_decision, "task_reply": self._on_task_reply}

    def _on_decision(self, session: Session, msg: session_pb2.SiteMessage) -> None:
        d = msg.job_decision
        with self._lock:
            grid = self._grids.get(d.job_id)
        if grid is not None and grid.has_site(session.site_id):
            # A site that lost the running job (it restarted) was asked again.
            grid.set_ready(session.site_id, d.approved)
            self.audit("job.site_rejoin",
                       {"job_id": d.job_id, "site": session.site_id, "approved": str(d.approved)})
            return
        with self._lock:
            job = self._jobs.get(d.job_id)
            if (job is None or job.state != jobs_pb2.JOB_STATE_AWAITING_APPROVAL
                    or session.site_id not in dict(job.targets)
                    or session.site_id in job.approvals):
                return
            job.approvals[session.site_id] = (
                d.approved, d.reason[:512], d.dataset_fingerprint[:128])
            self._lock.notify_all()
        self.audit(
            "job.site_decision",
            {"job_id": d.job_id, "site": session.site_id, "approved": str(d.approved),
             "code_sha256": job.code_sha256},
        )

    def _on_task_reply(self, session: Session, msg: session_pb2.SiteMessage) -> None:
        with self._lock:
            grid = self._grids.get(msg.task_reply.job_id)
        if grid is None or not grid.has_site(session.site_id):
            return
        # One reassembler per site, not per stream: a reply may straddle a renewal.
        lock, ra = self._reassemblers.setdefault(
            session.site_id, (threading.Lock(), Reassembler(self.settings.max_update_bytes)))
        try:
            with lock:
                done = ra.add(msg.task_reply)
        except InsituError as e:
            # Answer the instruction at once: the strategy counts a failure, no waiting.
            grid.reject(session.site_id, msg.task_reply.message_id, e.detail)
            return
        if done is not None:
            grid.on_reply(session.site_id, done)

    def _on_session_change(self, event: str, session: Session) -> None:
        site = session.site_id
        with self._lock:
            grids = {j: g for j, g in self._grids.items() if g.has_site(site)}
        if event == "close":
            current = self.sessions.get(site)
            if current is not None and current is not session and not current.closed.is_set():
                return  # renewed: the site answers its pending messages on the new stream
            self._reassemblers.pop(site, None)
            for grid in grids.values():
                grid.site_disconnected(site)
        elif event == "open":
            for job_id, grid in grids.items():
                if job_id in session.site_jobs:
                    continue  # renewed or reconnected with its worker: still in the job
                # The site lost the job (it restarted): it sits out until it approves again.
                grid.set_ready(site, False)
                job = self._jobs.get(job_id)
                if job is not None:
                    session.outbound.put(proposal(job, site))
            with self._lock:
                self._lock.notify_all()

    # -- job slots -----------------------------------------------------------------------

    def _slot(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self._jobs[job_id]
            try:
                # Claimed under the lock: a cancel either lands before (the job is already
                # finished, or ends here) or after (the running job sees its event).
                with self._lock:
                    if job.state in FINISHED:
                        continue
                    if not job.cancel.is_set():
                        self._set_state(job, jobs_pb2.JOB_STATE_AWAITING_APPROVAL)
                if job.cancel.is_set():
                    raise ServerAppCancelled(detail="job cancelled before it started")
                with tracer().start_as_current_span(
                    "insitu.job", context=extract_from_dict(job.trace)
                ):
                    self._run(job)
            except ServerAppCancelled as e:
                self._end_quietly(job, jobs_pb2.JOB_STATE_CANCELLED, e.detail)
            except Exception as e:
                log.exception("job %s failed", job_id)
                detail = e.detail if isinstance(e, InsituError) else type(e).__name__
                self._end_quietly(job, jobs_pb2.JOB_STATE_FAILED, detail,
                                  fix=f"see `insitu job logs {job_id}` for the ServerApp's output"
                                  if "job log" in detail else "")

    def _end_quietly(self, job: JobRecord, state: int, error: str, fix: str = "") -> None:
        """End ``job`` from a slot; a store or audit failure is logged, never kills the slot."""
        try:
            self._finish(job, state, error, fix)
        except Exception:
            log.exception("job %s: its end could not be recorded", job.job_id)

    def _set_state(self, job: JobRecord, state: int) -> None:
        """Move an unfinished job on; the record changes only once the store has it."""
        with self._lock:
            if job.state in FINISHED:
                raise ServerAppCancelled(detail=f"job already {state_name(job.state)}")
            row = replace(job.to_row(), state=state_name(state))
            self.store.save(row)
            job.state = state
            self._lock.notify_all()

    def _finish(self, job: JobRecord, state: int, error: str = "", fix: str = "") -> None:
        with self._lock:
            if job.state in FINISHED:
                return
            finished_at = time.time()
            self.store.save(replace(job.to_row(), state=state_name(state), error=error,
                                    fix=fix, finished_at=finished_at))
            job.state, job.error, job.fix, job.finished_at = state, error, fix, finished_at
            self._lock.notify_all()
        outcome = _OUTCOME.get(state, "failed")
        self.audit(
            "job.end",
            {"job_id": job.job_id, "code_sha256": job.code_sha256, "outcome": outcome,
             "error": error[:200]},
        )
        for site, _ in job.targets:
            s = self.sessions.get(site)
            if s is not None:
                s.outbound.put(session_pb2.CoordinatorMessage(
                    job_end=session_pb2.JobEnd(job_id=job.job_id, outcome=outcome)))

    def _collect_approvals(self, job: JobRecord) -> list[str]:
        proposed: set[str] = set()
        deadline = time.monotonic() + self.settings.approval_timeout_s
        while True:
            for site, _dataset in job.targets:
                s = self.sessions.get(site)
                if site not in proposed and s is not None and not s.closed.is_set():
                    s.outbound.put(proposal(job, site))
                    proposed.add(site)
            with self._lock:
                if job.cancel.is_set():
                    raise ServerAppCancelled(detail="job cancelled while sites were deciding")
                if len(job.approvals) == len(job.targets) or time.monotonic() > deadline:
                    break
                self._lock.wait(0.5)
        return [s for s, _ in job.targets if job.approvals.get(s, (False, "", ""))[0]]

    def _run(self, job: JobRecord) -> None:
        approved = self._collect_approvals(job)
        with self._lock:
            self.store.save(job.to_row())  # the sites' decisions
        if len(approved) < job.min_sites:
            error, fix = refusal_summary(job, self.settings.approval_timeout_s)
            self._finish(job, jobs_pb2.JOB_STATE_REFUSED, error, fix)
            return
        self._set_state(job, jobs_pb2.JOB_STATE_RUNNING)
        root = job_dir(self.data_dir, job.job_id)
        root.mkdir(parents=True, exist_ok=True)

        def persist_round(summary: jobs_pb2.RoundSummary) -> None:  # under self._lock
            self.store.append_round(job.job_id, summary.SerializeToString())
            self.store.save(job.to_row())

        tracker = RoundTracker(job, self._lock, self.audit, on_summary=persist_round,
                               snapshot=root / "last_aggregate.npz")

        def attach(grid: SessionGrid) -> None:
            with self._lock:
                self._grids[job.job_id] = grid

        try:
            version = self.runner.run(job, approved, tracker, attach)
        finally:
            with self._lock:
                self._grids.pop(job.job_id, None)
        with self._lock:
            job.model_version = version
        self._finish(job, jobs_pb2.JOB_STATE_SUCCEEDED)
