"""Federated jobs at the coordinator: submission, site approval, running the job's
ServerApp over :class:`SessionGrid`, round bookkeeping, and registering the result.

Jobs run one at a time in one worker thread: Flower's TaskIdentity is process-global, so
two ServerApps in one process would stamp each other's run id.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.supercore.run import Run
from opentelemetry import context as otel_context

from coordinator.aggregation import install as install_aggregator
from coordinator.flower_compat import node_id_for, set_task_identity
from coordinator.flower_grid import GridEvent, SessionGrid
from coordinator.registry import ModelRegistry, arrays_to_npz
from coordinator.serverapp import ServerAppCancelled, run_serverapp_sandboxed
from coordinator.sessions import Session, SessionRegistry
from insitu._proto.v1 import jobs_pb2, session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import MAX_BUNDLE_BYTES, code_hash, unpack_app
from insitu.flower.config import config_value
from insitu.flower.refusals import refusal_text
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.rpc.chunks import Reassembler
from insitu.sandbox import Launcher, Limits, SandboxSpec, launcher_for, sandbox_env
from insitu.telemetry.tracing import extract_from_dict, inject_to_dict, tracer

__all__ = ["JobManager", "JobRecord", "JobSettings", "validate_submit"]

log = logging.getLogger(__name__)

STRATEGIES = ("fedavg", "fedprox", "fedadam", "trimmed-mean", "median")
_FINISHED = frozenset({
    jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_REFUSED,
    jobs_pb2.JOB_STATE_CANCELLED,
})


def _state_name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()
AuditFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class JobSettings:
    approval_timeout_s: float = 60.0
    node_wait_s: float = 60.0
    max_update_bytes: int = 512 * 1024 * 1024
    max_rounds: int = 1000
    unsafe_unsandboxed_serverapps: bool = False
    job_max_wall_s: float = 86_400.0  # a job's ServerApp is stopped past this
    serverapp_limits: Limits = field(default_factory=lambda: Limits(
        memory_mb=16_384, cpu_seconds=86_400, processes=256, open_files=1024, scratch_mb=1024,
        message_timeout_s=86_400.0))


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
    state: int = jobs_pb2.JOB_STATE_AWAITING_APPROVAL
    approvals: dict[str, tuple[bool, str, str]] = field(default_factory=dict)
    history: list[jobs_pb2.RoundSummary] = field(default_factory=list)
    current_round: int = 0
    model_version: str = ""
    error: str = ""
    run_id: int = field(default_factory=lambda: uuid.uuid4().int & ((1 << 63) - 1))
    epsilon: dict[str, float] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

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
        )


def validate_submit(req: jobs_pb2.SubmitJobRequest, settings: JobSettings) -> None:
    """INVALID_ARGUMENT naming the field for a submission the coordinator must refuse."""
    def bad(msg: str) -> InsituError:
        return InsituError(ErrorCode.INVALID_ARGUMENT, msg)

    if not req.app_bundle:
        raise bad("app_bundle is empty")
    if len(req.app_bundle) > MAX_BUNDLE_BYTES:
        raise bad(f"app_bundle exceeds {MAX_BUNDLE_BYTES} bytes")
    if code_hash(req.app_bundle) != req.code_sha256:
        raise bad("code_sha256 does not match app_bundle")
    if not req.targets:
        raise bad("targets must name at least one site")
    seen = set()
    for t in req.targets:
        validate_name(t.site_id, "targets.site_id")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", t.dataset):
            raise bad("targets.dataset must be a dataset name")
        if t.site_id in seen:
            raise bad(f"site {t.site_id} is targeted twice")
        seen.add(t.site_id)
    if not 1 <= req.rounds <= settings.max_rounds:
        raise bad(f"rounds must be between 1 and {settings.max_rounds}")
    if req.strategy not in STRATEGIES:
        raise bad(f"strategy must be one of {', '.join(STRATEGIES)}")
    if not 1 <= req.min_sites <= len(req.targets):
        raise bad("min_sites must be between 1 and the number of targets")
    if not 1 <= req.round_timeout_s <= 86_400:
        raise bad("round_timeout_s must be between 1 and 86400")
    dp = req.dp
    for name in ("noise_multiplier", "max_grad_norm", "epsilon", "delta"):
        v = getattr(dp, name)
        if not (v >= 0 and np.isfinite(v)):
            raise bad(f"dp.{name} must be a finite number >= 0")
    if dp.noise_multiplier > 0 and dp.epsilon <= 0:
        raise bad("a DP job must state the epsilon budget it may spend")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", req.model_name):
        raise bad("model_name must be lowercase letters, digits, '.', '_' or '-'")
    if len(req.run_config) > 64 or any(
        len(k) > 64 or len(v) > 256 for k, v in req.run_config.items()
    ):
        raise bad("run_config is too large")
    _check_validated_fields(req, bad)


def _check_validated_fields(
    req: jobs_pb2.SubmitJobRequest, bad: Callable[[str], InsituError]
) -> None:
    """``run_config`` may not undo what the request's validated fields say: more rounds,
    fewer sites, or a strategy outside the allow-list."""
    cfg = {k: config_value(v) for k, v in req.run_config.items()}
    rounds = cfg.get("num-server-rounds")
    if rounds is not None and (
        not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= req.rounds
    ):
        raise bad(f"run_config num-server-rounds must be an integer between 1 and rounds "
                  f"({req.rounds})")
    min_nodes = cfg.get("min-nodes")
    if min_nodes is not None and (
        not isinstance(min_nodes, int) or isinstance(min_nodes, bool)
        or not req.min_sites <= min_nodes <= len(req.targets)
    ):
        raise bad(f"run_config min-nodes must be an integer between min_sites "
                  f"({req.min_sites}) and the number of targets ({len(req.targets)})")
    strategy = cfg.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise bad(f"run_config strategy must be one of {', '.join(STRATEGIES)}")


class JobManager:
    def __init__(
        self,
        sessions: SessionRegistry,
        registry: ModelRegistry,
        data_dir: Path,
        trust_domain: str,
        audit: AuditFn,
        settings: JobSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.data_dir = data_dir
        self.trust_domain = trust_domain
        self.audit = audit
        self.settings = settings or JobSettings()
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Condition()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._grid: SessionGrid | None = None
        self._reassemblers: dict[str, Reassembler] = {}
        install_aggregator()  # zero-copy weighted aggregation inside flwr's strategies
        self._thread = threading.Thread(target=self._worker, name="job-worker", daemon=True)
        self._thread.start()
        sessions.on_change(self._on_session_change)

    def stop(self) -> None:
        self._queue.put(None)

    # -- API -------------------------------------------------------------------------

    def submit(self, req: jobs_pb2.SubmitJobRequest, owner: str, org: str = "") -> JobRecord:
        validate_submit(req, self.settings)
        job = JobRecord(
            job_id=uuid.uuid4().hex[:16],
            owner=owner,
            code_sha256=req.code_sha256,
            bundle=req.app_bundle,
            targets=[(t.site_id, t.dataset) for t in req.targets],
            rounds=req.rounds,
            strategy=req.strategy,
            run_config=dict(req.run_config),
            min_sites=req.min_sites,
            round_timeout_s=req.round_timeout_s,
            dp=req.dp,
            purpose=req.purpose,
            model_name=req.model_name,
            org=org,
            trace=inject_to_dict(),
        )
        with self._lock:
            self._jobs[job.job_id] = job
        self.audit(
            "job.submit",
            {
                "job_id": job.job_id,
                "code_sha256": job.code_sha256,
                "sites": ",".join(s for s, _ in job.targets),
            },
        )
        self._queue.put(job.job_id)
        return job

    def cancel(self, job_id: str, by: str) -> JobRecord:
        """Stop a job that has not finished: a queued or waiting job ends at once, a running
        one when its ServerApp is stopped. FAILED_PRECONDITION once it has finished."""
        job = self.get(job_id)
        with self._lock:
            if job.state in _FINISHED:
                raise InsituError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"job {job_id} already finished ({_state_name(job.state)}); "
                    "nothing to cancel",
                )
            job.cancel.set()
            self._lock.notify_all()
        self.audit("job.cancel", {"job_id": job_id, "by": by, "code_sha256": job.code_sha256})
        return job

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise InsituError(ErrorCode.NOT_FOUND, f"job {job_id} not found")
        return job

    def records(self) -> list[JobRecord]:
        with self._lock:
            return list(self._jobs.values())

    def watch(self, job_id: str, timeout_s: float = 3600) -> Iterator[jobs_pb2.JobEvent]:
        job = self.get(job_id)
        yield jobs_pb2.JobEvent(snapshot=job.to_proto())
        sent = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                self._lock.wait_for(
                    lambda sent=sent: (  # type: ignore[misc]
                        len(job.history) > sent
                        or job.state
                        not in (jobs_pb2.JOB_STATE_AWAITING_APPROVAL, jobs_pb2.JOB_STATE_RUNNING)
                    ),
                    1.0,
                )
                new = job.history[sent:]
                done = job.state not in (
                    jobs_pb2.JOB_STATE_AWAITING_APPROVAL,
                    jobs_pb2.JOB_STATE_RUNNING,
                )
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
        grid = self._grid
        if grid is not None and grid.job_id == d.job_id and grid.has_site(session.site_id):
            # A rejoining site re-approved (or now refuses) the running job.
            grid.set_ready(session.site_id, d.approved)
            self.audit(
                "job.site_rejoin",
                {"job_id": d.job_id, "site": session.site_id, "approved": str(d.approved)},
            )
            return
        with self._lock:
            job = self._jobs.get(d.job_id)
            if (
                job is None
                or session.site_id not in dict(job.targets)
                or session.site_id in job.approvals
            ):
                return
            job.approvals[session.site_id] = (
                d.approved,
                d.reason[:512],
                d.dataset_fingerprint[:128],
            )
            self._lock.notify_all()
        self.audit(
            "job.site_decision",
            {
                "job_id": d.job_id,
                "site": session.site_id,
                "approved": str(d.approved),
                "code_sha256": job.code_sha256,
            },
        )

    def _on_task_reply(self, session: Session, msg: session_pb2.SiteMessage) -> None:
        grid = self._grid
        if grid is None or msg.task_reply.job_id != grid.job_id:
            return
        ra = self._reassemblers.setdefault(
            session.session_id, Reassembler(self.settings.max_update_bytes)
        )
        try:
            done = ra.add(msg.task_reply)
        except InsituError as e:
            # Answer the instruction at once: the strategy counts a failure, no waiting.
            grid.reject(session.site_id, msg.task_reply.message_id, e.detail)
            return
        if done is not None:
            grid.on_reply(session.site_id, done)

    def _on_session_change(self, event: str, session: Session) -> None:
        if event == "close":
            self._reassemblers.pop(session.session_id, None)
            grid = self._grid
            if grid is not None:
                grid.site_disconnected(session.site_id)
        elif event == "open":
            grid = self._grid
            if grid is not None and grid.has_site(session.site_id):
                grid.set_ready(session.site_id, False)
                job = self._jobs.get(grid.job_id)
                if job is not None:
                    self._propose(job, session.site_id, session)
            with self._lock:
                self._lock.notify_all()

    # -- the worker ------------------------------------------------------------------------

    def _worker(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self._jobs[job_id]
            try:
                if job.cancel.is_set():
                    raise ServerAppCancelled(detail="job cancelled before it started")
                with tracer().start_as_current_span(
                    "insitu.job", context=extract_from_dict(job.trace)
                ):
                    self._run(job)
            except ServerAppCancelled as e:
                self._finish(job, jobs_pb2.JOB_STATE_CANCELLED, e.detail)
            except Exception as e:
                log.exception("job %s failed", job_id)
                detail = e.detail if isinstance(e, InsituError) else type(e).__name__
                self._finish(job, jobs_pb2.JOB_STATE_FAILED, detail)

    def _finish(self, job: JobRecord, state: int, error: str = "") -> None:
        with self._lock:
            job.state = state
            job.error = error
            self._lock.notify_all()
        outcome: dict[int, str] = {
            jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
            jobs_pb2.JOB_STATE_REFUSED: "refused",
            jobs_pb2.JOB_STATE_CANCELLED: "cancelled",
        }
        self.audit(
            "job.end",
            {
                "job_id": job.job_id,
                "code_sha256": job.code_sha256,
                "outcome": outcome.get(state, "failed"),
                "error": error[:200],
            },
        )
        for site, _ in job.targets:
            s = self.sessions.get(site)
            if s is not None:
                s.outbound.put(
                    session_pb2.CoordinatorMessage(
                        job_end=session_pb2.JobEnd(
                            job_id=job.job_id, outcome=outcome.get(state, "failed")
                        )
                    )
                )

    def _propose(self, job: JobRecord, site: str, s: Session) -> None:
        idx = [t for t, _ in job.targets].index(site)
        dataset = job.targets[idx][1]
        s.outbound.put(
            session_pb2.CoordinatorMessage(
                job_proposal=session_pb2.JobProposal(
                    job_id=job.job_id,
                    code_sha256=job.code_sha256,
                    app_bundle=job.bundle,
                    dataset=dataset,
                    run_config=job.run_config,
                    dp=session_pb2.DpSettings(
                        noise_multiplier=job.dp.noise_multiplier,
                        max_grad_norm=job.dp.max_grad_norm,
                        epsilon=job.dp.epsilon,
                        delta=job.dp.delta,
                    ),
                    rounds=job.rounds,
                    owner=job.owner,
                    purpose=job.purpose,
                    partition_id=idx,
                    num_partitions=len(job.targets),
                    run_id=job.run_id,
                )
            )
        )

    def _collect_approvals(self, job: JobRecord) -> list[str]:
        proposed: set[str] = set()
        deadline = time.monotonic() + self.settings.approval_timeout_s
        n = len(job.targets)
        while True:
            for site, _dataset in job.targets:
                s = self.sessions.get(site)
                if site not in proposed and s is not None and not s.closed.is_set():
                    self._propose(job, site, s)
                    proposed.add(site)
            with self._lock:
                if job.cancel.is_set():
                    raise ServerAppCancelled(detail="job cancelled while sites were deciding")
                if len(job.approvals) == n or time.monotonic() > deadline:
                    break
                self._lock.wait(0.5)
        return [s for s, _ in job.targets if job.approvals.get(s, (False, "", ""))[0]]

    def _serverapp_launcher(self, app_dir: Path) -> Launcher:
        """The sandbox a job's ServerApp runs in: only its app, read-only; no network."""
        spec = SandboxSpec(limits=self.settings.serverapp_limits, ro={app_dir: "/app"},
                           env=sandbox_env(os.environ))
        return launcher_for(
            spec, unsafe=self.settings.unsafe_unsandboxed_serverapps, host_cwd=app_dir,
            escape_hatch="unsafe_unsandboxed_serverapps to true in the coordinator's [coordinator]",
        )

    def _run(self, job: JobRecord) -> None:
        approved = self._collect_approvals(job)
        if len(approved) < job.min_sites:
            self._finish(
                job,
                jobs_pb2.JOB_STATE_REFUSED,
                f"{len(approved)} of {len(job.targets)} sites approved; {job.min_sites} needed",
            )
            return
        with self._lock:
            job.state = jobs_pb2.JOB_STATE_RUNNING
            self._lock.notify_all()
        app_root = self.data_dir / "jobs" / job.job_id
        layout = unpack_app(job.bundle, app_root / "app")
        sites = {node_id_for(SpiffeId.site(self.trust_domain, s).uri): s for s in approved}
        tracker = _RoundTracker(job, self._lock, self.audit)
        grid = SessionGrid(
            job.job_id,
            sites,
            self.sessions,
            round_timeout_s=job.round_timeout_s,
            node_wait_s=self.settings.node_wait_s,
            max_update_bytes=self.settings.max_update_bytes,
            on_event=tracker.on_event,
        )
        set_task_identity(job.run_id)
        grid.set_run(Run.create_empty(job.run_id))
        run_config: dict[str, Any] = dict(layout.config)
        run_config.update(
            {
                "num-server-rounds": job.rounds,
                "strategy": job.strategy,
                "min-nodes": job.min_sites,
                "fraction-train": 1.0,
                "fraction-evaluate": 1.0,
            }
        )
        run_config.update({k: config_value(v) for k, v in job.run_config.items()})
        # The validated fields win (submit refused run_config values outside them).
        run_config["num-server-rounds"] = min(int(run_config["num-server-rounds"]), job.rounds)
        run_config["min-nodes"] = max(int(run_config["min-nodes"]), job.min_sites)
        if run_config["strategy"] not in STRATEGIES:
            run_config["strategy"] = job.strategy
        launcher = self._serverapp_launcher(layout.directory)
        self._grid = grid
        self.audit(
            "job.start" if launcher.sandboxed else "job.start_unsandboxed",
            {"job_id": job.job_id, "code_sha256": job.code_sha256, "sites": ",".join(approved),
             "serverapp": "bubblewrap" if launcher.sandboxed
             else "in a plain process (unsafe_unsandboxed_serverapps)"},
        )
        try:
            outcome = run_serverapp_sandboxed(
                app_dir=layout.directory, serverapp=layout.serverapp,
                onnx_export=layout.onnx_export, run_id=job.run_id, job_id=job.job_id,
                run_config=run_config, grid=grid, launcher=launcher, audit=self.audit,
                log_path=app_root / "serverapp.log",
                max_update_bytes=self.settings.max_update_bytes,
                wall_s=self.settings.job_max_wall_s,
                cancel=job.cancel,
            )
        finally:
            self._grid = None
        if not tracker.any_train_success:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, "no site completed a training round")
        # The model is what the strategy returned, never the last arrays the grid sent
        # (with fraction-evaluate = 0 that is the previous round's, or the initial model).
        arrays = _final_arrays(outcome.arrays)
        onnx = outcome.onnx
        state = arrays_to_npz({k: v.numpy() for k, v in arrays.items()})
        lineage = {
            "job_id": job.job_id,
            "code_sha256": job.code_sha256,
            "rounds": job.rounds,
            "strategy": job.strategy,
            "sites": sorted(approved),
            "datasets": {f"{s}/{d}": job.approvals[s][2] for s, d in job.targets if s in approved},
            "epsilon_spent": {s: round(e, 6) for s, e in tracker.epsilon.items()},
            "metrics": tracker.final_metrics,
        }
        record = self.registry.store(job.model_name, state, onnx, lineage, job.owner, job.org)
        with self._lock:
            job.model_version = record.version
        self.audit(
            "model.register",
            {
                "job_id": job.job_id,
                "model": job.model_name,
                "version": record.version,
                "code_sha256": job.code_sha256,
            },
        )
        self._finish(job, jobs_pb2.JOB_STATE_SUCCEEDED)


def _final_arrays(arrays: ArrayRecord | None) -> ArrayRecord:
    """The final arrays of the (last) strategy the ServerApp ran, checked finite."""
    if arrays is None or not len(arrays):
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION,
            "the ServerApp's strategy returned no model (run a Flower strategy's start())",
        )
    for name, array in arrays.items():
        if not np.isfinite(array.numpy()).all():
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION, f"the final model's array {name!r} is not finite"
            )
    return arrays


class _RoundTracker:
    """Turns grid events into per-round summaries, audit events and ε totals.

    Thread-safe: events arrive on every site's session thread and the ServerApp's; one
    lock makes each event's counting and summarizing atomic, so a round is summarized once,
    with all its replies.
    """

    def __init__(self, job: JobRecord, lock: threading.Condition, audit: AuditFn) -> None:
        self.job = job
        self.lock = lock
        self.audit = audit
        self._events_lock = threading.Lock()
        self.sent: dict[tuple[str, str], int] = {}
        self.done: dict[tuple[str, str], list[GridEvent]] = {}
        self.started: dict[tuple[str, str], float] = {}
        self.any_train_success = False
        self.epsilon: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}

    def on_event(self, e: GridEvent) -> None:
        # Replies arrive on session threads: bring the job's trace along for the records.
        token = otel_context.attach(extract_from_dict(self.job.trace))
        try:
            with self._events_lock:
                self._on_event(e)
        finally:
            otel_context.detach(token)

    def _on_event(self, e: GridEvent) -> None:
        key = (e.group_id, e.message_type.split(".")[0])
        if e.kind == "sent":
            self.sent[key] = self.sent.get(key, 0) + 1
            self.started.setdefault(key, time.monotonic())
            return
        if e.kind == "rejected":
            self.audit(
                "job.update_rejected",
                {
                    "job_id": self.job.job_id,
                    "site": e.site_id,
                    "reason": e.detail,
                    "code_sha256": self.job.code_sha256,
                },
            )
        self.done.setdefault(key, []).append(e)
        if len(self.done[key]) >= self.sent.get(key, 0):
            self._summarize(key)

    def _summarize(self, key: tuple[str, str]) -> None:
        events = self.done.pop(key)
        ok = [
            e for e in events
            if e.kind == "reply" and e.reply is not None and not e.reply.has_error()
        ]
        failed = sorted({e.site_id for e in events if e not in ok})
        site_errors = sorted({_site_error(e) for e in events if e not in ok})
        metrics = _weighted_metrics([e.reply for e in ok if e.reply is not None])
        for e in ok:
            assert e.reply is not None
            for rec in e.reply.content.metric_records.values():
                eps = rec.get("dp-epsilon")
                if isinstance(eps, int | float):
                    self.epsilon[e.site_id] = self.epsilon.get(e.site_id, 0.0) + float(eps)
        round_no = int(key[0]) if key[0].isdigit() else 0
        summary = jobs_pb2.RoundSummary(
            round=round_no,
            phase=key[1],
            sites_ok=sorted(e.site_id for e in ok),
            sites_failed=failed,
            site_errors=site_errors,
            metrics=metrics,
            wall_seconds=time.monotonic() - self.started.pop(key, time.monotonic()),
        )
        if key[1] == "train" and ok:
            self.any_train_success = True
        if metrics:
            self.final_metrics.update({f"{key[1]}_{k}": v for k, v in metrics.items()})
        with self.lock:
            self.job.history.append(summary)
            self.job.current_round = max(self.job.current_round, round_no)
            self.lock.notify_all()
        self.audit(
            "job.round",
            {
                "job_id": self.job.job_id,
                "code_sha256": self.job.code_sha256,
                "round": str(round_no),
                "phase": key[1],
                "sites_ok": ",".join(summary.sites_ok),
                "sites_failed": ",".join(failed),
                "site_errors": "; ".join(site_errors)[:400],
            },
        )


def _site_error(e: GridEvent) -> str:
    """``"<site>: <why>"``: a site's error code rendered from the catalog (its own reason
    text never shows), or what the coordinator itself saw (timeout, rejected update)."""
    if e.reply is not None and e.reply.has_error():
        return f"{e.site_id}: {refusal_text(e.reply.error.code)}"
    return f"{e.site_id}: {e.detail or e.kind}"


def _weighted_metrics(replies: list[Message]) -> dict[str, float]:
    totals: dict[str, float] = {}
    weight = 0.0
    for r in replies:
        for rec in r.content.metric_records.values():
            w = float(rec.get("num-examples", 1) or 1)  # type: ignore[arg-type]
            weight += w
            for k, v in rec.items():
                if k != "num-examples" and isinstance(v, int | float):
                    totals[k] = totals.get(k, 0.0) + w * float(v)
    return {k: v / weight for k, v in totals.items()} if weight else {}


def job_json(job: JobRecord) -> str:
    return json.dumps({"job_id": job.job_id, "state": job.state})
