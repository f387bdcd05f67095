"""Jobs at a site: deciding on proposals, running approved tasks through the job's
sandboxed ClientApp worker, and sending replies back only through the egress contract
and, where the dataset asks for it, the site's own DP.

For each task the daemon

1. parses the instruction once (:class:`ParsedInstruction`) and tells the egress guard a
   reply is owed;
2. runs it in the job's worker (a bubblewrap sandbox unless the site set
   ``unsafe_unsandboxed_jobs``) and parses the reply once (:class:`ParsedReply`);
3. checks the reply against the egress contract (declared keys, bounds, exact arrays);
4. for a DP dataset, clips the update and adds Gaussian noise, and charges the ledger with
   the ε its own accountant computes (the job's ``dp-epsilon`` metric is only a claim,
   audited as such);
5. sends the reply, or in its place an error reply that carries a catalog code only.

A failure at any step is answered at once, so the coordinator's round proceeds without
waiting for its timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import AppLayout, unpack_app
from insitu.flower.config import config_value
from insitu.flower.refusals import SiteRefusal, refusal_text
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.chunks import Reassembler, split_message
from insitu.sandbox import (
    BwrapLauncher,
    Launcher,
    Limits,
    SandboxSpec,
    launcher_for,
    sandbox_env,
)
from insitu.telemetry.tracing import extract_from_dict, tracer
from site_node.approvals import ApprovedCode
from site_node.egress import EgressGuard, EgressRefused
from site_node.training.datasets import DatasetRegistry, RegisteredDataset
from site_node.training.dp import DpAccountant, DpPolicy, clip_and_noise, epsilon_for
from site_node.training.ledger import PrivacyLedger
from site_node.training.reply import ParsedInstruction, ParsedReply, error_message
from site_node.training.runner import ClientAppRunner, build_node_config

__all__ = ["JobSandboxing", "SiteJobs", "node_id_for", "site_dp_policy"]

log = logging.getLogger(__name__)
_JOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, str]], None]

# How a worker failure is reported to the coordinator (a code, never the detail).
_WORKER_REFUSALS: Final = {
    ErrorCode.DEADLINE_EXCEEDED: SiteRefusal.WORKER_TIMEOUT,
    ErrorCode.UNAVAILABLE: SiteRefusal.WORKER_CRASHED,
    ErrorCode.RESOURCE_EXHAUSTED: SiteRefusal.WORKER_LIMIT,
    ErrorCode.INTEGRITY: SiteRefusal.REPLY_MALFORMED,
    ErrorCode.INVALID_ARGUMENT: SiteRefusal.REPLY_MALFORMED,
}


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
    """How this site contains job code: its ceilings, the GPUs it grants, and whether the
    sandbox is switched off (``unsafe_unsandboxed_jobs``)."""

    limits: Limits
    gpus: tuple[int, ...] = ()
    unsafe_unsandboxed: bool = False


@dataclass
class _Job:
    job_id: str
    code_sha256: str
    dataset: RegisteredDataset
    runner: ClientAppRunner
    dp: DpAccountant | None
    work: queue.Queue[tuple[str, ParsedInstruction, dict[str, str]] | None] = field(
        default_factory=queue.Queue
    )


class SiteJobs:
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
        self._daemon_env = dict(os.environ if daemon_env is None else daemon_env)
        self._jobs: dict[str, _Job] = {}
        # Jobs this site approved: job id -> (owner SPIFFE id, purpose, dataset).
        self.approved: dict[str, tuple[str, str, str]] = {}
        self.unsandboxed_starts = 0
        self._gpu_next = 0
        self._lock = threading.Lock()
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

    # -- inbound ---------------------------------------------------------------------

    def on_message(self, msg: session_pb2.CoordinatorMessage) -> None:
        route = self._routes.get(msg.WhichOneof("body") or "")
        if route is None:
            log.warning("coordinator message %s has no route here: ignored",
                        msg.WhichOneof("body"))
            return
        route(msg)

    def _decide(self, p: session_pb2.JobProposal) -> None:
        approved, reason, fingerprint = False, "", ""
        try:
            approved, reason, fingerprint = self._check_and_start(p)
        except InsituError as e:
            reason = e.detail or e.code.value
        except Exception as e:  # a broken app bundle must not take the daemon down
            log.exception("job %s could not start", p.job_id)
            reason = f"could not start the job ({type(e).__name__})"
        self.audit(
            "job.approve" if approved else "job.refuse",
            {
                "job_id": p.job_id,
                "code_sha256": p.code_sha256,
                "dataset": p.dataset,
                "reason": reason[:300],
            },
        )
        send_quietly(
            self.send,
            session_pb2.SiteMessage(
                job_decision=session_pb2.JobDecision(
                    job_id=p.job_id,
                    approved=approved,
                    reason=reason,
                    dataset_fingerprint=fingerprint,
                )
            ),
        )

    def _check_and_start(self, p: session_pb2.JobProposal) -> tuple[bool, str, str]:
        if not _JOB_ID.fullmatch(p.job_id):  # it names a folder under <site>/jobs
            return False, "job id must be 1-64 letters, digits, '_' or '-'", ""
        if hashlib.sha256(p.app_bundle).hexdigest() != p.code_sha256:
            return False, "app bundle does not match its code hash", ""
        if not self.approvals.is_approved(p.code_sha256):
            return False, "job code is not approved at this site", ""
        if p.dataset not in self.datasets:
            return False, f"dataset {p.dataset} is not registered here", ""
        ds = self.datasets.check_purpose(p.dataset, p.purpose)
        policy = site_dp_policy(ds, p.dp, p.job_id)
        accountant = DpAccountant(policy) if policy is not None else None
        reserved = False
        if accountant is not None:
            for _ in range(self._releases_so_far(ds.name, p.job_id)):
                accountant.record_release()  # a rejoin keeps counting where it left off
            if not self._has_open_reservation(ds.name, p.job_id):
                # Refuses over-budget work before anything is unpacked or run.
                planned = epsilon_for(accountant.policy, max(1, int(p.rounds)))
                if planned > accountant.epsilon:
                    self.ledger.reserve(ds.name, p.job_id, planned - accountant.epsilon)
                    reserved = True
        job_dir = self.site_dir / "jobs" / p.job_id
        try:
            app_dir = job_dir / "app"
            if app_dir.exists():  # a rejoin after a restart: extract the verified bundle anew
                shutil.rmtree(app_dir)
            layout = unpack_app(p.app_bundle, app_dir)
            limits = self.sandboxing.limits.grant(layout.declaration.resources)
            launcher = self._launcher(p, layout, ds, limits)
            run_config: dict[str, str | int | float | bool] = dict(layout.config)
            run_config.update({k: config_value(v) for k, v in p.run_config.items()})
            if p.dp.noise_multiplier > 0:  # the app may also run DP-SGD; its ε is a claim
                run_config.update(
                    {
                        "dp-noise-multiplier": float(p.dp.noise_multiplier),
                        "dp-max-grad-norm": float(p.dp.max_grad_norm or 1.0),
                        "dp-delta": float(p.dp.delta or 1e-5),
                    }
                )
            else:
                run_config["dp-noise-multiplier"] = 0.0
            runner = ClientAppRunner(
                layout.directory,
                layout.clientapp,
                build_node_config(
                    p.partition_id, p.num_partitions, ds.name, launcher.inside(ds.path),
                    device=None if _has_gpu(launcher) else "cpu",
                ),
                run_id=int(p.run_id),
                node_id=self.node_id,
                run_config=run_config,
                launcher=launcher,
                on_message=lambda direction, mtype, size, ok: self.audit(
                    "job.message",
                    {
                        "job_id": p.job_id,
                        "direction": direction,
                        "message_type": mtype,
                        "bytes": str(size),
                        "ok": str(ok),
                        "code_sha256": p.code_sha256,
                    },
                ),
            )
            fingerprint = self.datasets.fingerprint(p.dataset)
        except BaseException:
            if reserved:
                self.ledger.release(ds.name, p.job_id)
            shutil.rmtree(job_dir, ignore_errors=True)  # a refused job leaves no code behind
            raise
        self._audit_start(p, layout, launcher, policy)
        job = _Job(p.job_id, p.code_sha256, ds, runner, accountant)
        self.guard.register_job(p.job_id, layout.declaration, dp=accountant is not None)
        with self._lock:
            self._jobs[p.job_id] = job
            self.approved[p.job_id] = (p.owner, p.purpose, p.dataset)
        threading.Thread(
            target=self._work, args=(job,), name=f"job-{p.job_id}", daemon=True
        ).start()
        return True, "approved", fingerprint

    def _launcher(
        self, p: session_pb2.JobProposal, layout: AppLayout, ds: RegisteredDataset, limits: Limits
    ) -> Launcher:
        gpu = None
        if layout.declaration.resources.gpu and self.sandboxing.gpus:
            with self._lock:
                gpu = self.sandboxing.gpus[self._gpu_next % len(self.sandboxing.gpus)]
                self._gpu_next += 1
        spec = SandboxSpec(
            limits=limits,
            ro={layout.directory: "/app", ds.path: f"/data/{ds.name}/{ds.path.name}"},
            env=sandbox_env(self._daemon_env, gpu=gpu is not None),
            gpu=gpu,
        )
        # SandboxUnavailable refuses the job, naming the fix.
        return launcher_for(spec, unsafe=self.sandboxing.unsafe_unsandboxed,
                            host_cwd=layout.directory)

    def _audit_start(
        self, p: session_pb2.JobProposal, layout: AppLayout, launcher: Launcher,
        policy: DpPolicy | None,
    ) -> None:
        limits = launcher.limits
        attrs = {
            "job_id": p.job_id,
            "code_sha256": p.code_sha256,
            "dataset": p.dataset,
            "sandbox": "bubblewrap" if launcher.sandboxed else "none (unsafe_unsandboxed_jobs)",
            "limits": (f"memory_mb={limits.memory_mb} cpu_seconds={limits.cpu_seconds} "
                       f"processes={limits.processes} open_files={limits.open_files} "
                       f"scratch_mb={limits.scratch_mb} "
                       f"message_timeout_s={limits.message_timeout_s:g}"),
            "gpu": "yes" if _has_gpu(launcher) else "no",
            "site_dp": (
                f"clip_norm={policy.clip_norm:g} noise_multiplier={policy.noise_multiplier:g} "
                f"delta={policy.delta:g}" if policy else "none"
            ),
        }
        if not launcher.sandboxed:
            self.unsandboxed_starts += 1
            log.warning("job %s starts WITHOUT a sandbox (unsafe_unsandboxed_jobs)", p.job_id)
            self.audit("job.start_unsandboxed", attrs)
        else:
            self.audit("job.start", attrs)

    def _releases_so_far(self, dataset: str, job_id: str) -> int:
        return sum(
            1 for e in self.ledger.history(dataset) if e.job_id == job_id and e.kind == "charge"
        )

    def _has_open_reservation(self, dataset: str, job_id: str) -> bool:
        total = 0.0
        for e in self.ledger.history(dataset):
            if e.job_id != job_id:
                continue
            if e.kind == "release":
                return False
            total += e.epsilon if e.kind == "reserve" else 0.0
        return total > 0

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
        job.work.put((done.message_id, instruction, trace))

    def _work(self, job: _Job) -> None:
        try:
            while (item := job.work.get()) is not None:
                message_id, instruction, trace = item
                # The coordinator's trace continues here: one job round is one trace.
                with tracer().start_as_current_span(
                    "insitu.round.task", context=extract_from_dict(trace)
                ):
                    try:
                        self._handle(job, message_id, instruction)
                    except Exception:  # one bad reply must not end the job's loop
                        log.exception("job %s: message %s failed", job.job_id, message_id)
                        self._refused(job, "site", "site internal error")
                        self._send_error(job, message_id, instruction, SiteRefusal.SITE_INTERNAL)
        finally:
            job.runner.close()

    # -- one task --------------------------------------------------------------------

    def _handle(self, job: _Job, message_id: str, instruction: ParsedInstruction) -> None:
        try:
            reply = job.runner.run(instruction.proto)
        except InsituError as e:
            refusal = _WORKER_REFUSALS.get(e.code, SiteRefusal.SITE_INTERNAL)
            log.warning("job %s: worker failed: %s", job.job_id, e.detail)
            self._refused(job, "worker", refusal_text(refusal))
            self._send_error(job, message_id, instruction, refusal)
            return
        if reply.error_code is not None:
            code = self.guard.public_code(reply.error_code)
            # The app's own reason never leaves (it can quote local data); its code does.
            self._refused(job, "error_reply", "reason replaced by the catalog text")
            self._send_error(job, message_id, instruction, code)
            return
        try:
            self.guard.check_reply(job.job_id, message_id, reply)
            self._audit_claim(job, reply)
            if job.dp is not None and reply.arrays:
                self._privatize(job, instruction, reply)
            out = reply.encode(instruction, self.node_id)
        except EgressRefused as e:
            log.warning("job %s: reply refused: %s", job.job_id, e.detail)
            self._send_error(job, message_id, instruction, e.refusal)
            return
        self.guard.release(job.job_id, message_id)
        self._send(job, message_id, out)

    def _privatize(self, job: _Job, instruction: ParsedInstruction, reply: ParsedReply) -> None:
        """Clip and noise the update, and charge the ledger before it may leave."""
        assert job.dp is not None
        try:
            release = clip_and_noise(reply.array_values(), instruction.array_values(),
                                     job.dp.policy)
        except InsituError as e:
            self._refused(job, "dp", "update cannot be privatized")
            raise EgressRefused(e.detail, SiteRefusal.DP_NOT_APPLICABLE) from None
        epsilon = job.dp.charge_for_next()
        try:
            # Refused past the job's reservation: then this update never leaves.
            self.ledger.charge(job.dataset.name, job.job_id, epsilon)
        except InsituError as e:
            self._refused(job, "dp", "privacy budget exhausted")
            raise EgressRefused(e.detail, SiteRefusal.DP_BUDGET_EXCEEDED) from None
        job.dp.record_release()
        reply.replace_arrays(release.arrays)
        self.audit("job.dp_release", {
            "job_id": job.job_id,
            "code_sha256": job.code_sha256,
            "dataset": job.dataset.name,
            "releases": str(job.dp.releases),
            "epsilon_charged": repr(epsilon),
            "epsilon_total": repr(job.dp.epsilon),
            "clipped": str(release.clipped),
        })

    def _audit_claim(self, job: _Job, reply: ParsedReply) -> None:
        for record in reply.metrics.values():
            claim = record.get("dp-epsilon")
            if isinstance(claim, int | float) and not isinstance(claim, bool):
                # What the job says it spent: kept as a claim, never used for accounting.
                self.audit("job.dp_claim", {"job_id": job.job_id, "claimed_epsilon": repr(claim),
                                            "code_sha256": job.code_sha256})

    def _refused(self, job: _Job, route: str, rule: str) -> None:
        self.audit("job.reply_refused", {
            "job_id": job.job_id, "code_sha256": job.code_sha256, "route": route, "rule": rule,
        })

    def _send_error(
        self, job: _Job, message_id: str, instruction: ParsedInstruction, code: int
    ) -> None:
        """Answer the instruction at once with a code-only error reply."""
        try:
            reason = self.guard.clear_error(job.job_id, message_id, code)
        except InsituError as e:
            log.warning("job %s: no error reply sent: %s", job.job_id, e.detail)
            return
        out = error_message(instruction, self.node_id, self.guard.public_code(code), reason)
        self._send(job, message_id, out)

    def _send(self, job: _Job, message_id: str, out: ProtoMessage) -> None:
        content = out.content.SerializeToString() if out.HasField("content") else None
        error = out.error.SerializeToString() if out.HasField("error") else None
        meta = out.metadata.SerializeToString()
        try:
            for chunk in split_message(job.job_id, message_id, meta, content, error):
                self.send(session_pb2.SiteMessage(task_reply=chunk))
        except InsituError as e:
            log.warning("job %s: reply not sent: %s", job.job_id, e.detail)

    def _end(self, job_id: str, outcome: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.work.put(None)
        self.guard.forget_job(job_id)
        if job.dp is not None:
            self.ledger.release(job.dataset.name, job_id)
        self.audit(
            "job.end", {"job_id": job_id, "code_sha256": job.code_sha256, "outcome": outcome[:32]}
        )

    def job_dataset(self, job_id: str) -> str | None:
        with self._lock:
            j = self.approved.get(job_id)
        return j[2] if j else None

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for j in jobs:
            self._end(j, "site shutdown")


def _has_gpu(launcher: Launcher) -> bool:
    return isinstance(launcher, BwrapLauncher) and launcher.spec.gpu is not None
