"""One job as the coordinator knows it, its states by name, and its durable row."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Final

from coordinator.jobs.store import JobRow
from insitu._proto.v1 import jobs_pb2, session_pb2

__all__ = ["ACTIVE", "FINISHED", "JobRecord", "state_name"]

_NAMES: Final[dict[int, str]] = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_AWAITING_APPROVAL: "awaiting_approval",
    jobs_pb2.JOB_STATE_RUNNING: "running",
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_FAILED: "failed",
    jobs_pb2.JOB_STATE_REFUSED: "refused",
    jobs_pb2.JOB_STATE_CANCELLED: "cancelled",
    jobs_pb2.JOB_STATE_INTERRUPTED: "interrupted",
}
_STATES: Final = {v: k for k, v in _NAMES.items()}
FINISHED: Final = frozenset({
    jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_REFUSED,
    jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_INTERRUPTED,
})
ACTIVE: Final = frozenset({
    jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_AWAITING_APPROVAL, jobs_pb2.JOB_STATE_RUNNING,
})


def state_name(state: int) -> str:
    return _NAMES.get(state, "unknown")


@dataclass
class JobRecord:
    job_id: str
    owner: str
    code_sha256: str
    bundle: bytes
    targets: list[tuple[str, str]]
    rounds: int
    strategy: str
    run_config: dict[str, str]
    min_sites: int
    round_timeout_s: int
    dp: session_pb2.DpSettings
    purpose: str
    model_name: str
    org: str = ""
    trace: dict[str, str] = field(default_factory=dict)  # the submitter's trace context
    state: int = jobs_pb2.JOB_STATE_QUEUED
    approvals: dict[str, tuple[bool, str, str]] = field(default_factory=dict)
    history: list[jobs_pb2.RoundSummary] = field(default_factory=list)
    current_round: int = 0
    model_version: str = ""
    error: str = ""
    fix: str = ""
    run_id: int = field(default_factory=lambda: uuid.uuid4().int & ((1 << 63) - 1))
    epsilon: dict[str, float] = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def from_request(
        cls, job_id: str, req: jobs_pb2.SubmitJobRequest, owner: str, org: str,
        trace: dict[str, str],
    ) -> JobRecord:
        return cls(
            job_id=job_id, owner=owner, code_sha256=req.code_sha256, bundle=req.app_bundle,
            targets=[(t.site_id, t.dataset) for t in req.targets], rounds=req.rounds,
            strategy=req.strategy, run_config=dict(req.run_config), min_sites=req.min_sites,
            round_timeout_s=req.round_timeout_s, dp=session_pb2.DpSettings(
                noise_multiplier=req.dp.noise_multiplier, max_grad_norm=req.dp.max_grad_norm,
                epsilon=req.dp.epsilon, delta=req.dp.delta),
            purpose=req.purpose, model_name=req.model_name, org=org, trace=trace,
        )

    def request(self) -> jobs_pb2.SubmitJobRequest:
        """The submission, less its bundle (stored apart)."""
        return jobs_pb2.SubmitJobRequest(
            code_sha256=self.code_sha256,
            targets=[jobs_pb2.SiteDataset(site_id=s, dataset=d) for s, d in self.targets],
            rounds=self.rounds, strategy=self.strategy, run_config=self.run_config,
            min_sites=self.min_sites, round_timeout_s=self.round_timeout_s, dp=self.dp,
            purpose=self.purpose, model_name=self.model_name,
        )

    def to_row(self) -> JobRow:
        return JobRow(
            job_id=self.job_id, owner=self.owner, org=self.org, code_sha256=self.code_sha256,
            model_name=self.model_name, request=self.request().SerializeToString(),
            run_id=self.run_id, state=state_name(self.state), submitted_at=self.submitted_at,
            finished_at=self.finished_at, error=self.error, fix=self.fix,
            model_version=self.model_version, current_round=self.current_round,
            approvals=json.dumps({s: list(v) for s, v in self.approvals.items()}),
            extra=json.dumps({"trace": self.trace, "epsilon": self.epsilon}),
        )

    @classmethod
    def from_row(cls, row: JobRow, rounds: list[bytes]) -> JobRecord:
        """A stored job (its bundle is read from the store only if it runs again)."""
        req = jobs_pb2.SubmitJobRequest.FromString(row.request)
        job = cls.from_request(row.job_id, req, row.owner, row.org, {})
        extra = json.loads(row.extra or "{}")
        job.trace = {str(k): str(v) for k, v in extra.get("trace", {}).items()}
        job.epsilon = {str(k): float(v) for k, v in extra.get("epsilon", {}).items()}
        job.bundle = b""
        job.run_id = row.run_id
        job.state = _STATES[row.state]
        job.submitted_at, job.finished_at = row.submitted_at, row.finished_at
        job.error, job.fix, job.model_version = row.error, row.fix, row.model_version
        job.current_round = row.current_round
        job.approvals = {
            s: (bool(v[0]), str(v[1]), str(v[2]))
            for s, v in json.loads(row.approvals or "{}").items()
        }
        job.history = [jobs_pb2.RoundSummary.FromString(r) for r in rounds]
        return job

    def to_proto(self) -> jobs_pb2.Job:
        return jobs_pb2.Job(
            job_id=self.job_id,
            code_sha256=self.code_sha256,
            state=self.state,  # type: ignore[arg-type]
            targets=[jobs_pb2.SiteDataset(site_id=s, dataset=d) for s, d in self.targets],
            approvals=[
                jobs_pb2.SiteApproval(
                    site_id=s,
                    decided=s in self.approvals,
                    approved=self.approvals.get(s, (False, "", ""))[0],
                    reason=self.approvals.get(s, (False, "", ""))[1],
                )
                for s, _ in self.targets
            ],
            rounds=self.rounds,
            current_round=self.current_round,
            owner=self.owner,
            model_name=self.model_name,
            model_version=self.model_version,
            error=self.error,
            history=self.history,
            strategy=self.strategy,
            fix=self.fix,
            submitted_unix=int(self.submitted_at),
            finished_unix=int(self.finished_at or 0),
        )
