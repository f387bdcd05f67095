"""Jobs at a site, from proposal to end: deciding on proposals, holding each approved
job's sandboxed ClientApp worker within the site's budget, and ending jobs. Each task
is answered by :mod:`site_node.training.tasks` (egress contract, the site's own DP).

A job's life at the site:

- a proposal is checked (approved code, dataset and purpose, DP policy, an ε reservation,
  the app's resource request against the site's ceilings and its whole job budget); an
  approved job asks :mod:`site_node.training.capacity` for a slot and, until it gets one,
  waits in a FIFO queue with its instructions: its worker process starts only once it
  holds the slot (and the GPU, if one is granted);
- a re-proposal of a job the site already holds (the coordinator after a reconnect) is
  answered from the held job (``job.rejoin``): no second worker, same dataset fingerprint;
- ``JobEnd`` stops the worker (or takes the job out of the queue, answering what it
  waited with), releases its ε reservation and its slot;
- each Welcome is reconciled: what the coordinator no longer runs is stopped and its
  reservation released (``job.reconciled``), also reservations left by a crash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from flwr.common.constant import ErrorCode as FlowerErrorCode
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.chunks import Reassembler
from insitu.sandbox import Limits
from insitu.telemetry.tracing import extract_from_dict, tracer
from site_node.approvals import ApprovedCode
from site_node.egress import EgressGuard
from site_node.training.capacity import Grant, JobCapacity, JobSlot, Ticket
from site_node.training.datasets import DatasetRegistry, RegisteredDataset
from site_node.training.dp import DpAccountant, DpPolicy, epsilon_for
from site_node.training.ledger import PrivacyLedger
from site_node.training.plan import JobPlan, build_runner, plan_job, start_attrs
from site_node.training.reply import ParsedInstruction
from site_node.training.runner import ClientAppRunner
from site_node.training.tasks import TaskReplies

__all__ = ["RECONCILED_REASON", "JobSandboxing", "SiteJobs", "node_id_for", "site_dp_policy"]

log = logging.getLogger(__name__)
_JOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, str]], None]
RECONCILED_REASON: Final = "the coordinator no longer runs this job"


def send_quietly(send: Send, msg: session_pb2.SiteMessage) -> None:
    """Send, or log that the session dropped (the coordinator re-proposes on reconnect)."""
    try:
        send(msg)
    except InsituError as e:
        log.warning("could not send %s: %s", msg.WhichOneof("body"), e.detail)


def node_id_for(spiffe_uri: str) -> int:
    # Must equal coordinator.flower_compat.node_id_for (sites and coordinator agree).
    n = int.from_bytes(hashlib.sha256(spiffe_uri.encode()).digest()[:8], "big") & ((1 << 63) - 1)
    return n or 1


def site_dp_policy(
    ds: RegisteredDataset, requested: session_pb2.DpSettings, job_id: str
) -> DpPolicy | None:
    """The DP the site enforces for a job: the dataset's own ``dp``, else the settings the
    job brought (the site then enforces those), else none; PERMISSION_DENIED where the
    dataset has ``require_dp`` and the job brings no DP."""
    if ds.dp is not None:
        return ds.dp
    if requested.noise_multiplier > 0:
        policy = DpPolicy(
            clip_norm=float(requested.max_grad_norm or 1.0),
            noise_multiplier=float(requested.noise_multiplier),
            delta=float(requested.delta or 1e-5),
        )
        try:
            policy.validate(f"job {job_id} dp settings")
        except InsituError as e:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, e.detail) from None
        return policy
    if ds.require_dp:
        raise InsituError(
            ErrorCode.PERMISSION_DENIED,
            f"dataset {ds.name} requires DP and the job brings no DP settings",
        )
    return None


@dataclass(frozen=True)
class JobSandboxing:
    """How this site contains job code: its ceilings, and whether the sandbox is switched
    off (``unsafe_unsandboxed_jobs``). Which GPU a job gets is the capacity's to say."""

    limits: Limits
    unsafe_unsandboxed: bool = False


@dataclass(frozen=True)
class _Decision:
    approved: bool
    reason: str
    fingerprint: str = ""
    event: str = ""  # the audit event; by default job.approve / job.refuse


@dataclass
class _Job:
    plan: JobPlan
    fingerprint: str
    runner: ClientAppRunner  # built at approval; its worker starts with the first task
    dp: DpAccountant | None
    ticket: Ticket
    work: queue.Queue[tuple[str, ParsedInstruction, dict[str, str]] | None] = field(
        default_factory=queue.Queue
    )
    ended: bool = False  # set (under SiteJobs._lock) by JobEnd, reconcile or shutdown

    @property
    def job_id(self) -> str:
        return self.plan.job_id

    @property
    def code_sha256(self) -> str:
        return self.plan.code_sha256

    @property
    def dataset(self) -> RegisteredDataset:
        return self.plan.dataset


class SiteJobs:
    """The jobs this site holds, from proposal to end (thread-safe)."""

    def __init__(
        self,
        *,
        site_dir: Path,
        site_id: str,
        trust_domain: str,
        datasets: DatasetRegistry,
        ledger: PrivacyLedger,
        approvals: ApprovedCode,
        guard: EgressGuard,
        send: Send,
        audit: Audit,
        sandboxing: JobSandboxing,
        capacity: JobCapacity,
        daemon_env: Mapping[str, str] | None = None,
        max_message_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.site_dir = site_dir
        self.site_id = site_id
        self.node_id = node_id_for(SpiffeId.site(trust_domain, site_id).uri)
        self.datasets = datasets
        self.ledger = ledger
        self.approvals = approvals
        self.guard = guard
        self.send = send
        self.audit = audit
        self.sandboxing = sandboxing
        self.capacity = capacity
        self._daemon_env = dict(os.environ if daemon_env is None else daemon_env)
        self._jobs: dict[str, _Job] = {}
        # Jobs this site approved: job id -> (owner SPIFFE id, purpose, dataset).
        self.approved: dict[str, tuple[str, str, str]] = {}
        self.unsandboxed_starts = 0
        self._lock = threading.Lock()
        # One decision at a time, and none while a Welcome is reconciled: a proposal and
        # its re-proposal never both start a job, and reconcile sees every job decided.
        self._decisions = threading.Lock()
        self._tasks = TaskReplies(guard=guard, ledger=ledger, send=send, audit=audit,
                                  node_id=self.node_id)
        self._reassembler = Reassembler(max_message_bytes)
        self._traces: dict[tuple[str, str], dict[str, str]] = {}
        self._routes: dict[str, Callable[[session_pb2.CoordinatorMessage], None]] = {
            "job_proposal": lambda m: threading.Thread(
                target=self._decide, args=(m.job_proposal,), daemon=True
            ).start(),
            "task": lambda m: self._on_chunk(m.task),
            "job_end": lambda m: self._end(m.job_end.job_id, m.job_end.outcome),
        }

    @property
    def routes(self) -> Mapping[str, Callable[[session_pb2.CoordinatorMessage], None]]:
        """Inbound message kind -> handler, for the daemon's routing table."""
        return self._routes

    def active_job_ids(self) -> list[str]:
        """What this site's Hello says it holds: jobs with a worker (running or queued) and
        jobs with an open ε reservation (also one left by a crash)."""
        with self._lock:
            held = set(self._jobs)
        held.update(job_id for _dataset, job_id in self.ledger.open_reservations())
        return sorted(held)

    def slots(self) -> list[JobSlot]:
        """Each job as running (with what it holds) or queued (with what it waits for)."""
        return self.capacity.slots()

    # -- inbound ---------------------------------------------------------------------

    def on_message(self, msg: session_pb2.CoordinatorMessage) -> None:
        route = self._routes.get(msg.WhichOneof("body") or "")
        if route is None:
            log.warning("coordinator message %s has no route here: ignored",
                        msg.WhichOneof("body"))
            return
        route(msg)

    def _decide(self, p: session_pb2.JobProposal) -> None:
        try:
            with self._decisions:
                d = self._check_and_start(p)
        except InsituError as e:
            d = _Decision(False, e.detail or e.code.value)
        except Exception as e:  # a broken app bundle must not take the daemon down
            log.exception("job %s could not start", p.job_id)
            d = _Decision(False, f"could not start the job ({type(e).__name__})")
        self.audit(
            d.event or ("job.approve" if d.approved else "job.refuse"),
            {
                "job_id": p.job_id,
                "code_sha256": p.code_sha256,
                "dataset": p.dataset,
                "reason": d.reason[:300],
            },
        )
        send_quietly(
            self.send,
            session_pb2.SiteMessage(
                job_decision=session_pb2.JobDecision(
                    job_id=p.job_id,
                    approved=d.approved,
                    reason=d.reason,
                    dataset_fingerprint=d.fingerprint,
                )
            ),
        )

    def _check_and_start(self, p: session_pb2.JobProposal) -> _Decision:
        if not _JOB_ID.fullmatch(p.job_id):  # it names a folder under <site>/jobs
            return _Decision(False, "job id must be 1-64 letters, digits, '_' or '-'")
        with self._lock:
            held = self._jobs.get(p.job_id)
        if held is not None:
            return self._rejoin(held, p)
        if hashlib.sha256(p.app_bundle).hexdigest() != p.code_sha256:
            return _Decision(False, "app bundle does not match its code hash")
        if not self.approvals.is_approved(p.code_sha256):
            return _Decision(False, "job code is not approved at this site")
        if p.dataset not in self.datasets:
            return _Decision(False, f"dataset {p.dataset} is not registered here")
        ds = self.datasets.check_purpose(p.dataset, p.purpose)
        policy = site_dp_policy(ds, p.dp, p.job_id)
        accountant = DpAccountant(policy) if policy is not None else None
        reserved = False
        if accountant is not None:
            for _ in range(self._releases_so_far(ds.name, p.job_id)):
                accountant.record_release()  # a rejoin keeps counting where it left off
            if (ds.name, p.job_id) not in self.ledger.open_reservations():
                # Refuses over-budget work before anything is unpacked or run.
                planned = epsilon_for(accountant.policy, max(1, int(p.rounds)))
                if planned > accountant.epsilon:
                    self.ledger.reserve(ds.name, p.job_id, planned - accountant.epsilon)
                    reserved = True
        job_dir = self.site_dir / "jobs" / p.job_id
        try:
            plan = plan_job(p, job_dir / "app", ds, policy, self.sandboxing.limits)
            runner = self._runner(plan, gpu=None)  # checks the sandboxing; starts nothing
            fingerprint = self.datasets.fingerprint(p.dataset)
            # Last: a job above the site's whole budget is refused, naming the setting.
            ticket = self.capacity.request(p.job_id, plan.need)
        except BaseException:
            if reserved:
                self.ledger.release(ds.name, p.job_id)
            shutil.rmtree(job_dir, ignore_errors=True)  # a refused job leaves no code behind
            raise
        job = _Job(plan, fingerprint, runner, accountant, ticket)
        self.guard.register_job(p.job_id, plan.layout.declaration, dp=accountant is not None)
        with self._lock:
            self._jobs[p.job_id] = job
            self.approved[p.job_id] = (p.owner, p.purpose, p.dataset)
        threading.Thread(
            target=self._work, args=(job,), name=f"job-{p.job_id}", daemon=True
        ).start()
        if ticket.grant is None:
            self._audit_queued(job)
            return _Decision(True, "approved; queued until the site has capacity", fingerprint)
        return _Decision(True, "approved", fingerprint)

    def _rejoin(self, held: _Job, p: session_pb2.JobProposal) -> _Decision:
        """A re-proposal of a job this site holds (the coordinator after a reconnect): the
        same job keeps its worker, its place in the queue and its ε reservation."""
        plan = held.plan
        if (p.code_sha256, p.dataset, int(p.run_id)) != (
            plan.code_sha256, plan.dataset.name, plan.run_id
        ):
            return _Decision(
                False, f"job {p.job_id} already runs here with other code, dataset or run"
            )
        return _Decision(True, f"rejoined: job already {held.ticket.state} here",
                         held.fingerprint, event="job.rejoin")

    def _runner(self, plan: JobPlan, gpu: int | None) -> ClientAppRunner:
        return build_runner(plan, gpu, node_id=self.node_id, daemon_env=self._daemon_env,
                            unsafe_unsandboxed=self.sandboxing.unsafe_unsandboxed,
                            audit=self.audit)

    def _audit_queued(self, job: _Job) -> None:
        need = job.ticket.need
        self.audit("job.queued", {
            "job_id": job.job_id, "code_sha256": job.code_sha256,
            "waits_for": f"memory_mb={need.memory_mb} gpu={'yes' if need.gpu else 'no'}",
            "budget": (f"job_max_concurrent={self.capacity.budget.max_jobs} "
                       f"job_total_memory_mb={self.capacity.budget.total_memory_mb} "
                       f"job_gpus={list(self.capacity.budget.gpus)}"),
        })

    def _audit_start(self, job: _Job, grant: Grant) -> None:
        attrs = start_attrs(job.plan, job.runner.launcher, grant)
        if not job.runner.launcher.sandboxed:
            self.unsandboxed_starts += 1
            log.warning("job %s starts WITHOUT a sandbox (unsafe_unsandboxed_jobs)", job.job_id)
            self.audit("job.start_unsandboxed", attrs)
        else:
            self.audit("job.start", attrs)

    def _releases_so_far(self, dataset: str, job_id: str) -> int:
        return sum(
            1 for e in self.ledger.history(dataset) if e.job_id == job_id and e.kind == "charge"
        )

    def _on_chunk(self, chunk: session_pb2.TaskChunk) -> None:
        with self._lock:
            job = self._jobs.get(chunk.job_id)
        if job is None:
            log.warning("task for job %s, which this site did not approve: ignored", chunk.job_id)
            return
        if chunk.seq == 0:
            self._traces[(chunk.job_id, chunk.message_id)] = dict(chunk.trace)
        done = self._reassembler.add(chunk)
        if done is None:
            return
        trace = self._traces.pop((chunk.job_id, chunk.message_id), {})
        proto = ProtoMessage(metadata=ProtoMetadata.FromString(done.metadata))
        if done.content is not None:
            proto.content.CopyFrom(ProtoRecordDict.FromString(done.content))
        instruction = ParsedInstruction.parse(proto)
        self.guard.expect_reply(job.job_id, done.message_id, instruction.arrays)
        job.work.put((done.message_id, instruction, trace))  # waits here while queued

    # -- a job's worker thread -------------------------------------------------------

    def _work(self, job: _Job) -> None:
        try:
            if self._take_slot(job):
                self._serve(job)
        finally:
            job.runner.close()
            self.capacity.release(job.ticket)  # only now: its worker process is gone

    def _take_slot(self, job: _Job) -> bool:
        """Wait until the job holds its resources; False if it ended first. No worker
        process exists before this returns True."""
        grant = job.ticket.wait()
        if grant is None:
            return False
        runner, failed = job.runner, ""
        if grant.gpu is not None:  # the runner built at approval had none
            try:
                runner = self._runner(job.plan, gpu=grant.gpu)
            except InsituError as e:  # e.g. the granted device node is missing
                failed = e.detail or e.code.value
        with self._lock:
            if job.ended:
                if runner is not job.runner:
                    runner.close()
                return False
            job.runner = runner
        if failed:
            runner.abort()  # each task is then answered at once (site internal error)
            log.warning("job %s cannot start on GPU %s: %s", job.job_id, grant.gpu, failed)
            self.audit("job.start_failed", {"job_id": job.job_id, "code_sha256": job.code_sha256,
                                            "gpu": str(grant.gpu), "reason": failed[:300]})
        else:
            self._audit_start(job, grant)
        return True

    def _serve(self, job: _Job) -> None:
        # Each instruction is parsed once (ParsedInstruction) and its reply owed to the guard
        # when it arrives (_on_chunk); here they run in order.
        while (item := job.work.get()) is not None:
            if job.ended:  # JobEnd or reconcile: nothing more runs for it
                continue
            message_id, instruction, trace = item
            # The coordinator's trace continues here: one job round is one trace.
            with tracer().start_as_current_span(
                "insitu.round.task", context=extract_from_dict(trace)
            ):
                self._handle(job, message_id, instruction)

    def _handle(self, job: _Job, message_id: str, instruction: ParsedInstruction) -> None:
        # One seam per task (tests hold a site's task here to fail it mid-round).
        self._tasks.handle(job, message_id, instruction)

    # -- ending jobs -----------------------------------------------------------------

    def _end(self, job_id: str, outcome: str) -> None:
        stopped = self._stop(job_id)
        if stopped is not None:
            job, _released = stopped
            self.audit("job.end", {
                "job_id": job_id, "code_sha256": job.code_sha256, "outcome": outcome[:32],
            })

    def _stop(self, job_id: str) -> tuple[_Job, float] | None:
        """Stop ``job_id`` now: kill its worker (or take it out of the queue, answering the
        instructions it waited with), forget it, and release its ε reservation. Returns the
        job and the ε given back; None if this site does not hold it."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return None
            job.ended = True
        if self.capacity.withdraw(job.ticket):
            self._answer_waiting(job)
        job.runner.abort()
        job.work.put(None)
        self.guard.forget_job(job_id)
        released = self.ledger.release(job.dataset.name, job_id) if job.dp is not None else 0.0
        return job, released

    def _answer_waiting(self, job: _Job) -> None:
        """A job that ends while queued answers what it waited with: the site did not run it."""
        while True:
            try:
                item = job.work.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                message_id, instruction, _trace = item
                self._tasks.answer_error(job, message_id, instruction,
                                         FlowerErrorCode.NODE_UNAVAILABLE)

    def reconcile(self, active_job_ids: Iterable[str]) -> list[str]:
        """Make this site agree with a coordinator's Welcome: stop every job it holds that
        is not in ``active_job_ids`` and release every open ε reservation (also ones left
        by a crash) of a job not in it; each audited as ``job.reconciled``. A listed job is
        untouched. Returns the job ids reconciled away."""
        keep = frozenset(active_job_ids)
        done: list[str] = []
        with self._decisions:
            with self._lock:
                gone = sorted(j for j in self._jobs if j not in keep)
            for job_id in gone:
                stopped = self._stop(job_id)
                if stopped is not None:
                    self._audit_reconciled(job_id, stopped[0].dataset.name, stopped[1])
                    done.append(job_id)
            for dataset, job_id in self.ledger.open_reservations():
                with self._lock:
                    held = job_id in self._jobs
                if job_id not in keep and not held:
                    self._audit_reconciled(job_id, dataset, self.ledger.release(dataset, job_id))
                    done.append(job_id)
        return done

    def _audit_reconciled(self, job_id: str, dataset: str, released: float) -> None:
        log.warning("job %s stopped: the coordinator no longer runs it", job_id)
        self.audit("job.reconciled", {
            "job_id": job_id, "dataset": dataset, "released_epsilon": repr(released),
            "reason": RECONCILED_REASON,
        })

    def job_dataset(self, job_id: str) -> str | None:
        with self._lock:
            j = self.approved.get(job_id)
        return j[2] if j else None

    def close(self) -> None:
        with self._decisions:
            with self._lock:
                jobs = list(self._jobs)
            for j in jobs:
                self._end(j, "site shutdown")
